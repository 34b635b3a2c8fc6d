//! A stop request (SIGTERM or SIGINT) as a flag the long loops poll between steps, so a run can
//! write its checkpoint and report `stopped` instead of dying mid-write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag raised by SIGTERM and SIGINT.
    pub fn from_signals() -> std::io::Result<Self> {
        let flag = StopFlag::default();
        signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.0.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, flag.0.clone())?;
        Ok(flag)
    }

    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
