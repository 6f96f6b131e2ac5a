#include "server/jobs/store.h"

#include <sqlite3.h>

#include "absl/strings/str_cat.h"

namespace traind::jobs {
namespace {

using trainer::v1::Job;
using trainer::v1::JobEvent;

// Schema versions, applied in order; never edit one that has shipped.
constexpr const char* kMigrations[] = {
    // 1: jobs and events.
    "CREATE TABLE jobs ("
    "  idx INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  state INTEGER NOT NULL,"
    "  request_id TEXT UNIQUE,"
    "  job BLOB NOT NULL);"
    "CREATE TABLE events ("
    "  job_id TEXT NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  event BLOB NOT NULL,"
    "  PRIMARY KEY (job_id, seq)) WITHOUT ROWID;",
    // 2: checkpoint files.
    "CREATE TABLE checkpoints ("
    "  job_id TEXT NOT NULL,"
    "  epoch INTEGER NOT NULL,"
    "  next_batch INTEGER NOT NULL,"
    "  global_step INTEGER NOT NULL,"
    "  path TEXT NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  size INTEGER NOT NULL,"
    "  attempt INTEGER NOT NULL,"
    "  PRIMARY KEY (job_id, path)) WITHOUT ROWID;",
};

// A prepared statement that finalises itself.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  bool ok() const { return rc_ == SQLITE_OK; }
  sqlite3_stmt* get() { return stmt_; }
  void Bind(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  void Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  void BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  void BindNull(int i) { sqlite3_bind_null(stmt_, i); }
  int Step() { return sqlite3_step(stmt_); }
  std::string Blob(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    return std::string(static_cast<const char*>(p), sqlite3_column_bytes(stmt_, col));
  }
  std::string Text(int col) {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p)) : std::string();
  }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

absl::Status SqlError(sqlite3* db, const std::string& what) {
  const int code = sqlite3_errcode(db);
  std::string msg = absl::StrCat("store: ", what, ": ", sqlite3_errmsg(db));
  if (code == SQLITE_FULL) return absl::ResourceExhaustedError(msg);
  if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) return absl::DataLossError(msg);
  return absl::InternalError(msg);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    absl::Status st = absl::InternalError(
        absl::StrCat("store: cannot open ", path, ": ", sqlite3_errmsg(db)));
    sqlite3_close(db);
    return st;
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<Store> store(new Store(db));
  absl::MutexLock lock(&store->mu_);
  for (const char* pragma : {"PRAGMA journal_mode=WAL;", "PRAGMA synchronous=NORMAL;",
                             "PRAGMA foreign_keys=ON;"}) {
    if (auto st = store->Exec(pragma); !st.ok()) return st;
  }
  if (auto st = store->Migrate(); !st.ok()) return st;
  return store;
}

Store::~Store() { sqlite3_close(db_); }

absl::Status Store::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("store: ", msg));
  }
  return absl::OkStatus();
}

absl::Status Store::Migrate() {
  Statement get(db_, "PRAGMA user_version;");
  if (!get.ok() || get.Step() != SQLITE_ROW) return SqlError(db_, "read schema version");
  const int64_t version = get.Int(0);
  constexpr int64_t kLatest = sizeof(kMigrations) / sizeof(kMigrations[0]);
  if (version > kLatest) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store: schema version ", version, " is newer than this traind (", kLatest,
        "); use a newer traind"));
  }
  for (int64_t v = version; v < kLatest; ++v) {
    if (auto st = Exec("BEGIN IMMEDIATE;"); !st.ok()) return st;
    absl::Status st = Exec(kMigrations[v]);
    if (st.ok()) st = Exec(absl::StrCat("PRAGMA user_version=", v + 1, ";").c_str());
    if (!st.ok()) {
      Exec("ROLLBACK;").IgnoreError();
      return st;
    }
    if (auto st2 = Exec("COMMIT;"); !st2.ok()) return st2;
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Store::NextIndex() {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT COALESCE(MAX(idx), 0) + 1 FROM jobs;");
  if (!s.ok() || s.Step() != SQLITE_ROW) return SqlError(db_, "next job index");
  return s.Int(0);
}

absl::Status Store::InsertJob(const StoredJob& job) {
  absl::MutexLock lock(&mu_);
  return Durably([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
  Statement s(db_, "INSERT INTO jobs (idx, id, state, request_id, job) VALUES (?, ?, ?, ?, ?);");
  if (!s.ok()) return SqlError(db_, "prepare insert job");
  s.Bind(1, job.index);
  s.Bind(2, job.job.id());
  s.Bind(3, static_cast<int64_t>(job.job.state()));
  if (job.request_id.empty()) {
    s.BindNull(4);
  } else {
    s.Bind(4, job.request_id);
  }
  s.BindBlob(5, job.job.SerializeAsString());
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "insert job " + job.job.id());
  return absl::OkStatus();
  });
}

template <typename F>
absl::Status Store::Durably(F&& body) {
  if (auto st = Exec("PRAGMA synchronous=FULL;"); !st.ok()) return st;
  absl::Status st = body();
  if (auto st2 = Exec("PRAGMA synchronous=NORMAL;"); !st2.ok() && st.ok()) st = st2;
  return st;
}

absl::Status Store::UpdateJob(const Job& job) {
  absl::MutexLock lock(&mu_);
  return Durably([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    Statement s(db_, "UPDATE jobs SET state = ?, job = ? WHERE id = ?;");
    if (!s.ok()) return SqlError(db_, "prepare update job");
    s.Bind(1, static_cast<int64_t>(job.state()));
    s.BindBlob(2, job.SerializeAsString());
    s.Bind(3, job.id());
    if (s.Step() != SQLITE_DONE) return SqlError(db_, "update job " + job.id());
    return absl::OkStatus();
  });
}

absl::Status Store::DeleteJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  return Durably([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    if (auto st = Exec("BEGIN IMMEDIATE;"); !st.ok()) return st;
    for (const char* sql : {"DELETE FROM events WHERE job_id = ?;",
                            "DELETE FROM checkpoints WHERE job_id = ?;",
                            "DELETE FROM jobs WHERE id = ?;"}) {
      Statement s(db_, sql);
      if (s.ok()) s.Bind(1, job_id);
      if (!s.ok() || s.Step() != SQLITE_DONE) {
        absl::Status st = SqlError(db_, "delete job " + job_id);
        Exec("ROLLBACK;").IgnoreError();
        return st;
      }
    }
    return Exec("COMMIT;");
  });
}

absl::Status Store::InsertCheckpoint(const CheckpointRecord& c) {
  absl::MutexLock lock(&mu_);
  return Durably([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    Statement s(db_,
                "INSERT OR REPLACE INTO checkpoints (job_id, epoch, next_batch, global_step, "
                "path, sha256, size, attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?);");
    if (!s.ok()) return SqlError(db_, "prepare insert checkpoint");
    s.Bind(1, c.job_id);
    s.Bind(2, static_cast<int64_t>(c.epoch));
    s.Bind(3, static_cast<int64_t>(c.next_batch));
    s.Bind(4, c.global_step);
    s.Bind(5, c.path);
    s.Bind(6, c.sha256);
    s.Bind(7, c.size);
    s.Bind(8, static_cast<int64_t>(c.attempt));
    if (s.Step() != SQLITE_DONE) return SqlError(db_, "insert checkpoint of " + c.job_id);
    return absl::OkStatus();
  });
}

absl::Status Store::DeleteCheckpoint(const std::string& job_id, const std::string& path) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "DELETE FROM checkpoints WHERE job_id = ? AND path = ?;");
  if (!s.ok()) return SqlError(db_, "prepare delete checkpoint");
  s.Bind(1, job_id);
  s.Bind(2, path);
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "delete checkpoint of " + job_id);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CheckpointRecord>> Store::ListCheckpoints(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_,
              "SELECT epoch, next_batch, global_step, path, sha256, size, attempt "
              "FROM checkpoints WHERE job_id = ? ORDER BY global_step DESC, epoch DESC;");
  if (!s.ok()) return SqlError(db_, "prepare list checkpoints");
  s.Bind(1, job_id);
  std::vector<CheckpointRecord> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    CheckpointRecord c;
    c.job_id = job_id;
    c.epoch = static_cast<int>(s.Int(0));
    c.next_batch = static_cast<int>(s.Int(1));
    c.global_step = s.Int(2);
    c.path = s.Text(3);
    c.sha256 = s.Text(4);
    c.size = s.Int(5);
    c.attempt = static_cast<int>(s.Int(6));
    out.push_back(std::move(c));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "list checkpoints of " + job_id);
  return out;
}

absl::Status Store::IntegrityCheck() {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "PRAGMA integrity_check;");
  if (!s.ok()) return SqlError(db_, "prepare integrity check");
  std::string findings;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    const std::string line = s.Text(0);
    if (line != "ok") absl::StrAppend(&findings, findings.empty() ? "" : "; ", line);
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "integrity check");
  if (!findings.empty()) return absl::DataLossError("store: integrity check: " + findings);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StoredJob>> Store::LoadJobs() {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT idx, COALESCE(request_id, ''), job FROM jobs ORDER BY idx;");
  if (!s.ok()) return SqlError(db_, "prepare load jobs");
  std::vector<StoredJob> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    StoredJob j;
    j.index = s.Int(0);
    j.request_id = s.Text(1);
    if (!j.job.ParseFromString(s.Blob(2))) {
      return absl::DataLossError(absl::StrCat("store: job row ", j.index, " is corrupt"));
    }
    out.push_back(std::move(j));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "load jobs");
  return out;
}

absl::Status Store::AppendEvent(const std::string& job_id, const JobEvent& event) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "INSERT INTO events (job_id, seq, event) VALUES (?, ?, ?);");
  if (!s.ok()) return SqlError(db_, "prepare append event");
  s.Bind(1, job_id);
  s.Bind(2, event.seq());
  s.BindBlob(3, event.SerializeAsString());
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "append event of " + job_id);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<JobEvent>> Store::ReadEvents(const std::string& job_id,
                                                        int64_t after_seq, int limit) {
  absl::MutexLock lock(&mu_);
  Statement s(db_,
              "SELECT event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?;");
  if (!s.ok()) return SqlError(db_, "prepare read events");
  s.Bind(1, job_id);
  s.Bind(2, after_seq);
  s.Bind(3, static_cast<int64_t>(limit));
  std::vector<JobEvent> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    JobEvent e;
    if (!e.ParseFromString(s.Blob(0))) {
      return absl::DataLossError(absl::StrCat("store: an event of ", job_id, " is corrupt"));
    }
    out.push_back(std::move(e));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "read events of " + job_id);
  return out;
}

absl::StatusOr<int64_t> Store::LastSeq(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?;");
  if (!s.ok()) return SqlError(db_, "prepare last seq");
  s.Bind(1, job_id);
  if (s.Step() != SQLITE_ROW) return SqlError(db_, "last seq of " + job_id);
  return s.Int(0);
}

}  // namespace traind::jobs
