// traind's dashboard: plain JavaScript over the HTTP JSON API (/v1/...).
// Routes: #/ (jobs), #/job/ID (one job, live), #/submit.
// The charts are exposed as window.traindCharts for tests and the console.
"use strict";

const main = document.getElementById("main");
let leave = () => {};  // stops the current page's timers and streams
window.traindCharts = {};

// ---- small helpers ------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick" || k === "onsubmit" || k === "onchange") e[k] = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? `${body.error.status}: ${body.error.message}` : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error ? body.error.status : "";
  }
}

async function api(path, options) {
  const res = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : {}; } catch (e) { body = null; }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

const pct = (x) => (x === undefined || x === null ? "–" : (100 * x).toFixed(1) + " %");
const num = (x) => Number(x || 0);
const when = (ms) => (num(ms) ? new Date(num(ms)).toLocaleString() : "–");
const kindName = (k) => (k === "JOB_KIND_UNSPECIFIED" ? "FINETUNE" : k);
const ended = (s) => s === "SUCCEEDED" || s === "FAILED" || s === "CANCELLED";

function stateBadge(state) {
  return el("span", { class: `state state-${state}`, "data-state": state }, state);
}

// Where an epoch's time went, as trainctl watch prints it; null from a
// daemon that does not report the steps' phases.
const epochTime = (m) => {
  if (!(num(m.forwardSeconds) > 0)) return null;
  const s = (v) => num(v).toFixed(1);
  const allreduce = num(m.allreduceSeconds) > 0 ? `, allreduce ${s(m.allreduceSeconds)}` : "";
  return `steps ${s(m.stepSeconds)} s (forward ${s(m.forwardSeconds)}, backward ${s(m.backwardSeconds)}${allreduce}, ` +
    `update ${s(m.updateSeconds)}), waiting for data ${s(m.dataSeconds)} s, validation ${s(m.validationSeconds)} s`;
};

// Epochs trained of the spec's; for a sweep, trials finished of its trials.
function progress(job) {
  const sweep = job.spec && job.spec.kind === "SWEEP";
  const summary = job.sweepSummary || {};
  const unit = sweep ? "trials" : "epochs";
  const total = sweep ? num(summary.trialCount) : num(job.spec && job.spec.epochs) || 1;
  if (sweep && total === 0) return el("span", {}, "-");  // not started yet
  const done = sweep ? num(summary.trialsFinished)
    : job.state === "SUCCEEDED" ? total : num(job.latest && job.latest.epoch);
  const share = Math.min(1, done / total);
  const bar = el("span", { class: "bar", title: `${done} of ${total} ${unit}` }, el("span"));
  bar.firstChild.style.width = `${Math.round(100 * share)}%`;
  return el("span", { "data-progress": `${done}/${total} ${unit}` }, bar, ` ${done}/${total} ${unit}`);
}

function showError(where, err) {
  where.replaceChildren(el("p", { class: "error" }, err.message || String(err)));
}

// ---- who am I -------------------------------------------------------------

async function whoami() {
  const who = document.getElementById("who");
  try {
    const me = await api("/v1/whoami");
    who.replaceChildren(`${me.user}${me.admin ? " (admin)" : ""} `);
    if (me.tokens) {
      who.append(el("button", { onclick: async () => {
        await api("/v1/logout", { method: "POST" });
        location.reload();
      } }, "Log out"));
    }
    return me;
  } catch (err) {
    if (err.status !== 401) throw err;
    who.replaceChildren("not logged in");
    return null;
  }
}

function loginPage() {
  const input = el("input", { type: "password", id: "token", size: 50, autocomplete: "off",
                              placeholder: "the token you use with trainctl --token" });
  const out = el("div");
  main.replaceChildren(
    el("h1", {}, "Log in"),
    el("form", { class: "submit", id: "login", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        await api("/v1/login", { method: "POST",
                                 headers: { Authorization: `Bearer ${input.value.trim()}` } });
        location.reload();
      } catch (err) { showError(out, err); }
    } }, el("label", { for: "token" }, "Token"), input, el("span"),
       el("button", { class: "primary", type: "submit" }, "Log in")),
    out);
}

// ---- the job list ---------------------------------------------------------

function listPage() {
  const body = el("tbody");
  const status = el("p", { class: "muted" });
  main.replaceChildren(
    el("h1", {}, "Jobs"),
    el("table", { id: "jobs" },
       el("thead", {}, el("tr", {}, ["Job", "Kind", "Dataset", "Owner", "State", "Priority",
                                     "Progress", "Val. accuracy", "Submitted"].map((h, i) =>
         el("th", { class: i === 7 ? "num" : "" }, h)))),
       body),
    status);
  const refresh = async () => {
    try {
      const rows = [];
      let token = "";
      do {
        const page = await api(`/v1/jobs?page_size=1000&page_token=${encodeURIComponent(token)}`);
        rows.push(...page.jobs);
        token = page.nextPageToken;
      } while (token);
      rows.reverse();  // newest first
      body.replaceChildren(...rows.map((j) => el("tr", { "data-job": j.id },
        el("td", {}, el("a", { href: `#/job/${j.id}` }, j.id)),
        el("td", {}, kindName(j.spec.kind)),
        el("td", {}, j.spec.dataset),
        el("td", {}, j.owner),
        el("td", {}, stateBadge(j.state),
           j.waitingReason ? el("div", { class: "muted waiting" }, `#${j.queuePosition} ${j.waitingReason}`) : ""),
        el("td", { class: "priority" }, j.spec.priority || "NORMAL"),
        el("td", {}, progress(j)),
        el("td", { class: "num" }, j.latest ? pct(j.latest.validationAccuracy) : "–"),
        el("td", {}, when(j.createTimeMs)))));
      status.textContent = rows.length ? `${rows.length} job(s); updated ${new Date().toLocaleTimeString()}`
                                       : "No jobs yet: submit one.";
    } catch (err) { showError(status, err); }
  };
  refresh();
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}

// ---- one job --------------------------------------------------------------

function lineChart(canvas, yTitle, yMax) {
  if (typeof Chart === "undefined") return null;  // built without libjs-chart.js
  return new Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false, parsing: false, normalized: true, maintainAspectRatio: false,
      elements: { point: { radius: 0 } },
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: "" } },
        y: { title: { display: true, text: yTitle }, min: 0, max: yMax },
      },
    },
  });
}

const palette = ["#2f6fd0", "#e67e22", "#27864b", "#c0392b", "#8e44ad", "#16a085", "#7f8c8d",
                 "#d4ac0d", "#2c3e50", "#e84393"];

function dataset(chart, label, color, extra) {
  const d = Object.assign({ label, data: [], borderColor: color, backgroundColor: color,
                            borderWidth: 1.5 }, extra || {});
  chart.data.datasets.push(d);
  return d;
}

function jobPage(id) {
  const facts = el("dl", { class: "facts" });
  const actions = el("div", { class: "actions" });
  const lossCanvas = el("canvas", { id: "loss-chart" });
  const accCanvas = el("canvas", { id: "accuracy-chart" });
  const report = el("section", { id: "report" });
  const trials = el("section", { id: "trials" });
  const log = el("ul", { id: "log", class: "muted" });
  const message = el("div");
  const title = el("h1", {}, id, " ", el("span", { id: "job-state" }));
  main.replaceChildren(title, message, actions, facts,
    el("div", { class: "charts" },
       el("div", { class: "panel" }, el("h2", {}, "Loss"), el("div", {}, lossCanvas)),
       el("div", { class: "panel" }, el("h2", {}, "Accuracy"), el("div", {}, accCanvas))),
    trials, report, el("h2", {}, "Log"), log);

  const loss = lineChart(lossCanvas, "loss");
  const acc = lineChart(accCanvas, "accuracy", 1);
  window.traindCharts = { loss, accuracy: acc };
  if (!loss) message.replaceChildren(el("p", { class: "muted" }, "Charts need Chart.js (Debian's libjs-chart.js) at build time."));
  const series = {};  // name -> dataset
  const get = (chart, name, color, extra) => {
    if (!chart) return { data: [] };
    if (!series[name]) series[name] = dataset(chart, name, color, extra);
    return series[name];
  };
  let smooth = null;
  let dirty = false;
  let job = null;

  const apply = (e) => {
    if (e.batch) {
      const b = e.batch;
      const x = num(b.globalStep) + 1;
      const trial = num(b.trial);
      const tag = trial ? ` (trial ${trial})` : "";
      const color = trial ? palette[(trial - 1) % palette.length] : "rgba(47,111,208,0.25)";
      get(loss, `batch loss${tag}`, color).data.push({ x, y: b.loss });
      if (!trial) {
        smooth = smooth === null ? b.loss : 0.9 * smooth + 0.1 * b.loss;
        get(loss, "batch loss, smoothed", "#2f6fd0", { borderWidth: 2 }).data.push({ x, y: smooth });
      }
      if (loss) loss.options.scales.x.title.text = "step";
      dirty = true;
    } else if (e.epoch) {
      const m = e.epoch;
      const trial = num(m.trial);
      if (trial) {
        const color = palette[(trial - 1) % palette.length];
        get(acc, `trial ${trial} validation`, color, { pointRadius: 3 }).data.push({ x: m.epoch, y: m.validationAccuracy });
      } else {
        get(acc, "train accuracy", "#e67e22", { pointRadius: 3 }).data.push({ x: m.epoch, y: m.trainAccuracy });
        get(acc, "validation accuracy", "#27864b", { pointRadius: 3 }).data.push({ x: m.epoch, y: m.validationAccuracy });
      }
      if (acc) {
        acc.options.scales.x.title.text = "epoch";
        acc.options.scales.x.ticks = { stepSize: 1, precision: 0 };
      }
      dirty = true;
    } else if (e.state) {
      document.getElementById("job-state").replaceChildren(stateBadge(e.state.state));
      log.append(el("li", {}, `${new Date(num(e.timeMs)).toLocaleTimeString()} ${e.state.state}${e.state.reason ? ": " + e.state.reason : ""}`));
      loadJob();
    } else if (e.log) {
      log.append(el("li", {}, `${new Date(num(e.timeMs)).toLocaleTimeString()} ${e.log.text}`));
    } else if (e.resumed) {
      log.append(el("li", {}, `resumed attempt ${e.resumed.attempt} at epoch ${e.resumed.epoch}`));
    } else if (e.trialFinished) {
      loadJob();
    }
  };
  const draw = setInterval(() => {
    if (!dirty) return;
    dirty = false;
    if (loss) loss.update("none");
    if (acc) acc.update("none");
  }, 500);

  // Replies can arrive out of order: a cancel's reply (CANCELLING) after the
  // reload that the CANCELLED event started. A job is shown only when it
  // was asked for after the one on the page, so the page never steps back.
  let asked = 0;
  let shown = 0;
  const show = (n, j, all) => {
    if (n < shown) return;
    shown = n;
    job = j;
    renderFacts();
    if (all) { renderTrials(); renderReport(); }
  };

  // A call that changes the job (pause, resume, cancel), then its facts.
  const change = (path, body) => async (ev) => {
    ev.target.disabled = true;
    const n = ++asked;
    try {
      const r = await api(`/v1/jobs/${id}:${path}`, body ? { method: "POST", body: JSON.stringify(body) } : { method: "POST" });
      show(n, r.job);
    } catch (err) { showError(message, err); ev.target.disabled = false; }
  };
  const renderActions = () => {
    const buttons = [];
    if (job.state === "QUEUED" || job.state === "RUNNING") {
      buttons.push(el("button", { id: "pause", onclick: change("pause") }, "Pause"));
    }
    if (job.state === "PAUSED") {
      buttons.push(el("button", { id: "resume", onclick: change("resume") }, "Resume"));
    }
    if (!ended(job.state) && job.state !== "CANCELLING") {
      const select = el("select", { id: "priority", "aria-label": "priority" },
        ...["LOW", "NORMAL", "HIGH", "URGENT"].map((p) => el("option", { value: p }, p)));
      select.value = job.spec.priority || "NORMAL";
      select.onchange = async () => {
        select.disabled = true;
        const n = ++asked;
        try {
          const r = await api(`/v1/jobs/${id}:setPriority`, { method: "POST", body: JSON.stringify({ priority: select.value }) });
          show(n, r.job);
        } catch (err) { showError(message, err); select.value = job.spec.priority || "NORMAL"; select.disabled = false; }
      };
      buttons.push(el("label", { class: "priority-picker" }, "Priority ", select));
    }
    if (!ended(job.state)) {
      buttons.push(el("button", { class: "danger", id: "cancel", onclick: change("cancel") }, "Cancel"));
    }
    if (job.state === "SUCCEEDED") {
      buttons.push(el("a", { class: "button", id: "download-pth", href: `/v1/jobs/${id}/weights?format=pth`, download: `${id}.pth` }, "Download .pth"));
      buttons.push(el("a", { class: "button", id: "download-safetensors", href: `/v1/jobs/${id}/weights?format=safetensors`, download: `${id}.safetensors` }, "Download .safetensors"));
    }
    actions.replaceChildren(...buttons);
  };

  const renderFacts = () => {
    const s = job.spec;
    document.getElementById("job-state").replaceChildren(stateBadge(job.state));
    const rows = [
      ["Kind", kindName(s.kind)], ["Dataset", `${s.dataset} (${job.numClasses} classes: ${job.trainImages} train / ${job.validationImages} validation images)`],
      ["Owner", job.owner], ["Progress", progress(job)],
      ["Priority", `${s.priority || "NORMAL"}${s.preemptible === false ? " (not preemptible)" : ""}`],
      ["Settings", `batch ${s.batchSize}, image ${s.imageSize} px, lr ${s.learningRate}, ${s.precision}, ${s.device}`],
      ["Submitted", when(job.createTimeMs)], ["Started", when(job.startTimeMs)], ["Ended", when(job.endTimeMs)],
    ];
    if (job.latest) rows.push(["Latest epoch", `${job.latest.epoch}: validation ${pct(job.latest.validationAccuracy)}, loss ${Number(job.latest.validationLoss).toFixed(4)}`]);
    if (job.latest && epochTime(job.latest)) rows.push(["Epoch time", epochTime(job.latest)]);
    if (job.waitingReason) rows.push(["Queue", `position ${job.queuePosition}: ${job.waitingReason}`]);
    if (job.error) rows.push(["Error", job.error]);
    if (job.weightsSha256) rows.push(["Weights SHA-256", job.weightsSha256]);
    if (job.placement && job.placement.launcher) rows.push(["Placement", `${job.placement.launcher}, ${job.placement.worldSize} ranks ${job.placement.schedulerJob || ""}`]);
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    renderActions();
  };

  const renderTrials = () => {
    if (!job.trials || !job.trials.length) return trials.replaceChildren();
    trials.replaceChildren(el("h2", {}, "Trials, best first (by final validation loss)"),
      el("table", { id: "trial-table" },
        el("thead", {}, el("tr", {}, ["Rank", "Trial", "Settings", "Epochs", "Val. loss", "Val. accuracy", "Stopped"].map((h) => el("th", {}, h)))),
        el("tbody", {}, job.trials.map((t, i) => el("tr", {},
          el("td", {}, i + 1), el("td", {}, t.trial),
          el("td", {}, (t.settings || []).map((x) => `${x.name}=${x.value}`).join(", ")),
          el("td", { class: "num" }, `${t.epochsRun}/${t.epochs}`),
          el("td", { class: "num" }, t.final ? Number(t.final.validationLoss).toFixed(4) : "–"),
          el("td", { class: "num" }, t.final ? pct(t.final.validationAccuracy) : "–"),
          el("td", {}, t.stopped || ""))))));
  };

  const renderReport = () => {
    const ev = job.evaluation;
    if (!ev || !ev.classes || !ev.classes.length) return report.replaceChildren();
    const n = ev.classes.length;
    const worst = [...ev.classes].sort((a, b) => a.recall - b.recall).slice(0, 10);
    const counts = (ev.confusion || []).map(Number);
    const max = Math.max(1, ...counts);
    const matrix = n <= 40 ? el("table", { class: "confusion", id: "confusion" },
      el("thead", {}, el("tr", {}, el("th", {}, "true \\ predicted"), ev.classes.map((c) => el("th", { class: "rot", title: c.name }, c.name)))),
      el("tbody", {}, ev.classes.map((c, i) => el("tr", {}, el("th", {}, c.name),
        ev.classes.map((_, j) => {
          const v = counts[i * n + j] || 0;
          return el("td", { class: `heat${v ? Math.min(5, 1 + Math.floor(4 * v / max)) : 0}`, title: `${c.name} → ${ev.classes[j].name}: ${v}` }, v || "");
        }))))) : el("p", { class: "muted" }, `${n} classes: the confusion matrix is in GET /v1/jobs/${id}/report and trainctl report --confusion.`);
    report.replaceChildren(
      el("h2", {}, "Evaluation on the validation split"),
      el("p", { id: "top1" }, `top-1 ${pct(ev.top1Accuracy)}, top-5 ${pct(ev.top5Accuracy)} of ${ev.images} images`),
      el("h2", {}, "Worst classes"),
      el("table", { id: "worst" }, el("thead", {}, el("tr", {}, ["Class", "Images", "Accuracy", "Precision"].map((h) => el("th", {}, h)))),
        el("tbody", {}, worst.map((c) => el("tr", {}, el("td", {}, c.name), el("td", { class: "num" }, c.support),
          el("td", { class: "num" }, pct(c.recall)), el("td", { class: "num" }, pct(c.precision)))))),
      el("h2", {}, "Confusion matrix"), matrix);
  };

  // One reload at a time; one asked for meanwhile runs after it (it may
  // follow a state the running one began before).
  let loading = false;
  let reload = false;
  async function loadJob() {
    if (loading) { reload = true; return; }
    loading = true;
    do {
      reload = false;
      const n = ++asked;
      try {
        show(n, (await api(`/v1/jobs/${id}`)).job, true);
      } catch (err) { showError(message, err); }
    } while (reload);
    loading = false;
  }

  let source = null;
  loadJob().then(() => {
    if (!job) return;
    // The browser reconnects by itself with Last-Event-ID; "end" closes it.
    source = new EventSource(`/v1/jobs/${id}/events`);
    source.onmessage = (m) => apply(JSON.parse(m.data));
    source.addEventListener("end", (m) => {
      source.close();
      const body = m.data ? JSON.parse(m.data) : {};
      if (body.error) showError(message, new ApiError(body.error.code, body));
      loadJob();
    });
  });
  return () => {
    if (source) source.close();
    clearInterval(draw);
    if (loss) loss.destroy();
    if (acc) acc.destroy();
  };
}

// ---- submit -----------------------------------------------------------------

function submitPage() {
  const field = (label, input) => [el("label", { for: input.id }, label), input];
  const kind = el("select", { id: "kind" }, ["FINETUNE", "SCRATCH"].map((k) => el("option", { value: k }, k)));
  const inputs = {
    dataset: el("input", { id: "dataset", required: true, placeholder: "a folder under the data root" }),
    pretrainedFile: el("input", { id: "pretrained", placeholder: "fine-tune: weights under the weights root" }),
    epochs: el("input", { id: "epochs", type: "number", min: 1, placeholder: "recipe default" }),
    batchSize: el("input", { id: "batch-size", type: "number", min: 1, placeholder: "recipe default" }),
    imageSize: el("input", { id: "image-size", type: "number", min: 32, placeholder: "recipe default" }),
    learningRate: el("input", { id: "learning-rate", type: "number", step: "any", min: 0, placeholder: "recipe default" }),
    precision: el("select", { id: "precision" }, ["PRECISION_UNSPECIFIED", "fp32", "bf16"].map((p) => el("option", { value: p }, p === "PRECISION_UNSPECIFIED" ? "default" : p))),
  };
  const out = el("div");
  main.replaceChildren(el("h1", {}, "Submit a job"),
    el("form", { class: "submit", id: "submit-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const spec = { kind: kind.value, dataset: inputs.dataset.value.trim() };
      if (inputs.pretrainedFile.value.trim()) spec.pretrainedFile = inputs.pretrainedFile.value.trim();
      for (const k of ["epochs", "batchSize", "imageSize"]) if (inputs[k].value) spec[k] = parseInt(inputs[k].value, 10);
      if (inputs.learningRate.value) spec.learningRate = parseFloat(inputs.learningRate.value);
      if (inputs.precision.value !== "PRECISION_UNSPECIFIED") spec.precision = inputs.precision.value;
      try {
        const r = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify(spec) });
        location.hash = `#/job/${r.jobId}`;
      } catch (err) { showError(out, err); }
    } },
    field("Kind", kind), field("Dataset", inputs.dataset), field("Pretrained weights", inputs.pretrainedFile),
    field("Epochs", inputs.epochs), field("Batch size", inputs.batchSize), field("Image size", inputs.imageSize),
    field("Learning rate", inputs.learningRate), field("Precision", inputs.precision),
    el("span"), el("button", { class: "primary", type: "submit" }, "Submit")),
    el("p", { class: "muted" }, "Sweeps, augmentation and distributed settings: trainctl submit -f job.json, or POST /v1/jobs."),
    out);
  return () => {};
}

// ---- routing ----------------------------------------------------------------

let me = undefined;
async function route() {
  leave();
  leave = () => {};
  if (me === undefined) {
    try { me = await whoami(); } catch (err) { return showError(main, err); }
  }
  if (me === null) return loginPage();
  const hash = location.hash || "#/";
  const job = hash.match(/^#\/job\/([A-Za-z0-9_.-]+)$/);
  if (job) leave = jobPage(job[1]);
  else if (hash === "#/submit") leave = submitPage();
  else leave = listPage();
}

window.addEventListener("hashchange", route);
route();
