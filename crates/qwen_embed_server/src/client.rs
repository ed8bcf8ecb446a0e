//! The client side, used by backends: one connection per request, and a wait that stays interruptible.

use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::protocol::{read_frame, write_frame, Reply, Request};

/// How long one wait for the reply lasts before the caller's `between_waits` runs again.
const WAIT_MS: i32 = 10;

#[derive(Debug)]
pub enum CallError {
    /// Nobody listens on the socket: the server is not running (yet, or any more).
    Unavailable(io::Error),
    /// The connection broke before the reply: the server exited while handling the request.
    Lost(io::Error),
    /// The request is larger than a frame may be ([`crate::protocol::MAX_FRAME`]); it was not sent.
    TooLarge(io::Error),
}

/// Sends `request` to the server listening at `socket` and waits for the reply, calling `between_waits` every 10 ms
/// while it waits (a backend checks for interrupts there). If `between_waits` unwinds, the connection is closed
/// with it, which tells the server to drop the request.
pub fn call(socket: &Path, request: &Request, mut between_waits: impl FnMut()) -> Result<Reply, CallError> {
    let mut conn = UnixStream::connect(socket).map_err(CallError::Unavailable)?;
    write_frame(&mut conn, request).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidInput => CallError::TooLarge(e),
        _ => CallError::Lost(e),
    })?;
    let mut fd = libc::pollfd { fd: conn.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one valid pollfd for the lifetime of `conn`.
        let ready = unsafe { libc::poll(&mut fd, 1, WAIT_MS) };
        if ready > 0 {
            return read_frame(&mut conn).map_err(CallError::Lost);
        }
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(CallError::Lost(e));
            }
        }
        between_waits();
    }
}
