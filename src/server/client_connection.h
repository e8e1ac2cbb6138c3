// Whether the client of a request this thread is answering has gone away, for responses that
// write nothing until they are complete (a non-streaming completion). cpp-httplib 0.11 gives a
// handler no handle on its socket, so the socket is found once, by the connection's two
// addresses, and then polled; the server holds it open until the handler returns, so the
// descriptor cannot be reused meanwhile. (A streaming response needs none of this: its writes
// fail once the client has gone.)
#pragma once

#include <string>

namespace lserve::server {

class ClientConnection {
 public:
  // The connected socket whose local and peer addresses are these (as the request reports
  // them); none found leaves closed() always false, the behavior without this check.
  ClientConnection(const std::string& local_addr, int local_port, const std::string& remote_addr, int remote_port);

  // True once the peer has closed or reset the connection: a client that timed out or was
  // aborted. A client that only half-closes (shuts down its sending side and still reads) is
  // taken as gone too; HTTP clients in use do not do that.
  bool closed() const;

 private:
  int fd_ = -1;
};

}  // namespace lserve::server
