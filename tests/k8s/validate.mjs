// Validates Kubernetes objects against the official schemas that the
// kubernetes-models packages carry. Arguments: .json files (an array of
// objects) or .yaml files (one or more documents). Prints one line per
// object; exits 1 if any is refused or of a kind it does not know.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

const classes = {
  "v1/Secret": ["kubernetes-models/v1/Secret", "Secret"],
  "v1/Service": ["kubernetes-models/v1/Service", "Service"],
  "v1/ServiceAccount": ["kubernetes-models/v1/ServiceAccount", "ServiceAccount"],
  "v1/Pod": ["kubernetes-models/v1/Pod", "Pod"],
  "v1/PodList": ["kubernetes-models/v1/PodList", "PodList"],
  "v1/Status": ["@kubernetes-models/apimachinery/apis/meta/v1/Status", "Status"],
  "batch/v1/Job": ["kubernetes-models/batch/v1/Job", "Job"],
  "apps/v1/StatefulSet": ["kubernetes-models/apps/v1/StatefulSet", "StatefulSet"],
  "rbac.authorization.k8s.io/v1/Role": ["kubernetes-models/rbac.authorization.k8s.io/v1/Role", "Role"],
  "rbac.authorization.k8s.io/v1/RoleBinding":
      ["kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding", "RoleBinding"],
  "networking.k8s.io/v1/NetworkPolicy":
      ["kubernetes-models/networking.k8s.io/v1/NetworkPolicy", "NetworkPolicy"],
};

let failed = 0;
for (const file of process.argv.slice(2)) {
  const text = readFileSync(file, "utf8");
  const objects = file.endsWith(".json")
      ? JSON.parse(text)
      : parseAllDocuments(text).map((d) => d.toJS()).filter((o) => o);
  for (const obj of objects) {
    const key = `${obj.apiVersion}/${obj.kind}`;
    const name = `${file}: ${key} ${obj.metadata?.name ?? ""}`;
    if (key === "kustomize.config.k8s.io/v1beta1/Kustomization") continue;
    const entry = classes[key];
    if (!entry) {
      console.log(`UNKNOWN ${name}`);
      failed++;
      continue;
    }
    const mod = await import(entry[0]);
    try {
      new mod[entry[1]](obj).validate();
      console.log(`ok ${name}`);
    } catch (e) {
      console.log(`INVALID ${name}: ${e.message}`);
      failed++;
    }
  }
}
process.exit(failed ? 1 : 0);
