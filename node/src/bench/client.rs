//! The benchmarks' HTTP/1.1 client: one keep-alive connection that sends each request —
//! request line, headers and body — in a single write and reads the answer by its
//! `Content-Length`, the way the Redis client of `peers` sends a command.
//!
//! A general client (`ureq`) writes the headers and the body of a `PUT` in two writes: two
//! TCP segments, so the server reads (and is woken for) a store twice. That measured the
//! client, not the node — a 4-client store loop spent a third of the machine in the
//! client — and drove Redis and the node differently in the peer table.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::BenchError;

/// The most a response head may take.
const MAX_HEAD: usize = 16 << 10;

/// One keep-alive connection to `host:port`.
pub(super) struct Client {
    stream: TcpStream,
    host: String,
    request: Vec<u8>,
    buffer: Vec<u8>,
    /// Bytes of `buffer` that hold the unread part of the stream.
    filled: usize,
}

impl Client {
    /// Connects to `url` (`http://host:port`, no path).
    pub(super) fn connect(url: &str) -> Result<Client, BenchError> {
        let host = url
            .strip_prefix("http://")
            .ok_or_else(|| BenchError::Http(format!("not an http:// address: {url}")))?
            .trim_end_matches('/')
            .to_string();
        let stream = TcpStream::connect(&host)?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            host,
            request: Vec::with_capacity(2048),
            buffer: vec![0; 32 << 10],
            filled: 0,
        })
    }

    /// Sends `method path` with `body` (none when empty) and reads the whole answer: its
    /// status and body.
    pub(super) fn call(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, &[u8]), BenchError> {
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\n",
            self.host
        )?;
        if !body.is_empty() || method == "PUT" || method == "POST" {
            write!(self.request, "content-length: {}\r\n", body.len())?;
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request)?;
        self.read_response()
    }

    /// [`Client::call`] that accepts only `2xx` (and 404 when `missing_ok`).
    pub(super) fn expect(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        missing_ok: bool,
    ) -> Result<(), BenchError> {
        match self.call(method, path, body)? {
            (200..=299, _) => Ok(()),
            (404, _) if missing_ok => Ok(()),
            (status, answer) => Err(BenchError::Http(format!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            ))),
        }
    }

    fn read_response(&mut self) -> Result<(u16, &[u8]), BenchError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let parsed = response
                .parse(&self.buffer[..self.filled])
                .map_err(|e| BenchError::Http(format!("bad response: {e}")))?;
            if let httparse::Status::Complete(head) = parsed {
                let status = response.code.unwrap_or(0);
                let length = content_length(response.headers)?;
                let end = head + length;
                if self.buffer.len() < end {
                    self.buffer.resize(end, 0);
                }
                while self.filled < end {
                    self.fill()?;
                }
                // Keep-alive with one request in flight: nothing follows the body, so the
                // next answer starts at the front of the buffer.
                let leftover = self.filled - end;
                self.filled = 0;
                if leftover != 0 {
                    return Err(BenchError::Http(format!(
                        "{leftover} unexpected bytes after a response"
                    )));
                }
                return Ok((status, &self.buffer[head..end]));
            }
            if self.filled >= MAX_HEAD {
                return Err(BenchError::Http("response head too large".into()));
            }
            if self.buffer.len() == self.filled {
                self.buffer.resize(self.filled * 2, 0);
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> Result<(), BenchError> {
        let read = self.stream.read(&mut self.buffer[self.filled..])?;
        if read == 0 {
            return Err(BenchError::Http(
                "the server closed the connection mid-response".into(),
            ));
        }
        self.filled += read;
        Ok(())
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, BenchError> {
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(BenchError::Http(
                "chunked responses are not supported by the bench client".into(),
            ));
        }
    }
    Ok(headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that answers each request with `answers` in turn, written in pieces.
    fn serve(answers: Vec<&'static [u8]>) -> (String, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut requests = Vec::new();
            for answer in answers {
                let mut request = vec![0; 4096];
                let n = stream.read(&mut request).expect("read");
                requests.push(request[..n].to_vec());
                for piece in answer.chunks(7) {
                    stream.write_all(piece).expect("write");
                    stream.flush().expect("flush");
                }
            }
            requests
        });
        (url, handle)
    }

    #[test]
    fn sends_one_request_per_write_and_reads_answers_in_pieces() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
        ]);
        let mut client = Client::connect(&url).expect("connect");
        let (status, body) = client.call("PUT", "/v1/memories/a", b"value").expect("put");
        assert_eq!((status, body), (201, &b"hello"[..]));
        client
            .expect("GET", "/v1/memories/b", b"", true)
            .expect("404 is fine");
        let refused = client.expect("GET", "/v1/ping", b"", true);
        assert!(
            matches!(&refused, Err(BenchError::Http(m)) if m.contains("503") && m.contains("busy")),
            "{refused:?}"
        );
        let requests = server.join().expect("server");
        let first = String::from_utf8_lossy(&requests[0]);
        assert!(
            first.starts_with("PUT /v1/memories/a HTTP/1.1\r\n"),
            "{first}"
        );
        assert!(first.contains("content-length: 5\r\n"), "{first}");
        assert!(
            first.ends_with("\r\n\r\nvalue"),
            "one write carries the body: {first}"
        );
        assert!(!String::from_utf8_lossy(&requests[1]).contains("content-length"));
    }

    #[test]
    fn a_closed_connection_or_a_chunked_answer_is_an_error() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        let mut client = Client::connect(&url).expect("connect");
        assert!(client.call("GET", "/", b"").is_err());
        server.join().expect("server");
        assert!(client.call("GET", "/", b"").is_err(), "the server is gone");
    }
}
