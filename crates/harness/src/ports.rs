//! Free loopback ports, never handed out twice within this process.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use crate::error::{HarnessError, Result};

/// A port on 127.0.0.1 that was free a moment ago and was not handed out before by this process.
pub(crate) fn free_port() -> Result<u16> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Mutex::default);
    for _ in 0..1000 {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| HarnessError::io("binding 127.0.0.1:0", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading a bound port", e))?
            .port();
        let mut taken = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if taken.insert(port) {
            return Ok(port);
        }
    }
    Err(HarnessError::Failed(
        "no free port: every port offered was already handed out".into(),
    ))
}
