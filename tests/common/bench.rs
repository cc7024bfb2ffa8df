//! What the benchmarks share: medians, and a keep-alive HTTP/1.1 client for a node's control
//! socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The median of `values` (sorted in place); NaN when empty.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A keep-alive HTTP/1.1 connection to a node's control socket.
pub struct Api {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Api {
    /// Connects to the control socket at `socket`.
    pub fn connect(socket: &Path) -> Api {
        let stream = UnixStream::connect(socket).expect("connect to the control socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Api {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// GET `path`; returns the status and the body.
    pub fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        write!(
            self.writer,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        .unwrap();
        self.response()
    }

    /// POST `path` with an empty body; returns the status and the body.
    pub fn post(&mut self, path: &str) -> (u16, Vec<u8>) {
        write!(
            self.writer,
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        self.response()
    }

    fn response(&mut self) -> (u16, Vec<u8>) {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, body)
    }
}
