// The dashboard's files, built into the binary (server/http/dashboard/ and
// Debian's Chart.js, embedded by embed.cmake at build time): nothing is
// fetched at run time.
#ifndef TRAIND_SERVER_HTTP_ASSETS_H_
#define TRAIND_SERVER_HTTP_ASSETS_H_

#include <cstddef>
#include <string>

namespace traind::http {

struct Asset {
  const char* name;  // "index.html", "app.js", "chart.js", ...
  const char* content_type;
  const unsigned char* data;
  size_t size;
};

// The file called `name`; nullptr when there is none.
const Asset* FindAsset(const std::string& name);

}  // namespace traind::http

#endif  // TRAIND_SERVER_HTTP_ASSETS_H_
