//! The sandbox's accounting of tensor memory (docs/scripting.md, "The sandbox"): Lua does
//! not see the bytes behind a tensor userdata, so the script's tensors are counted here.
//! Each tensor a script's op makes carries a `Charge` on the live count, released when the
//! last handle on it is gone; before an op runs, `TensorMemory::admit` checks that what it
//! will allocate fits the cap per tensor and the limit on bytes held alive.

use super::messages::{lua_err, show_bytes};
use mlua::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Releases a tensor's bytes from the live count when the last handle on it (and every
/// tensor whose graph or storage holds it) is gone.
pub struct Charge {
    bytes: u64,
    live: Arc<AtomicU64>,
    /// Charges this tensor keeps alive: the tensor whose storage it views, the inputs its
    /// autograd graph holds.
    _parents: Vec<Arc<Charge>>,
    /// The charge that owns the storage this tensor views (None: its own).
    storage: Option<Arc<Charge>>,
    /// Length of the longest chain of charges below this one.
    pub depth: usize,
}

impl Charge {
    /// The charge that owns this tensor's storage.
    pub fn storage_owner(self: &Arc<Self>) -> Arc<Charge> {
        self.storage.clone().unwrap_or_else(|| self.clone())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.live.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Charge({} bytes)", self.bytes)
    }
}

/// The tensor memory of one Lua state: its caps and the bytes its tensors hold alive.
pub(super) struct TensorMemory {
    /// Bytes of tensors the script's own operations may hold alive at once.
    limit: u64,
    /// Bytes of one tensor a script makes.
    max_bytes: u64,
    /// Bytes of tensors the script's operations hold alive.
    live: Arc<AtomicU64>,
}

impl TensorMemory {
    pub(super) fn new(limit: u64, max_bytes: u64) -> Self {
        TensorMemory {
            limit,
            max_bytes,
            live: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes of tensors the script's operations hold alive.
    pub(super) fn bytes(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Checks that `bytes` more of tensors fit: under the per-tensor cap (`one` is the
    /// largest single new tensor) and, after a full collection of Lua's garbage if needed
    /// (Lua does not see tensor memory), under the live limit.
    pub(super) fn admit(&self, lua: &Lua, bytes: u64, one: u64, what: &str) -> LuaResult<()> {
        if one > self.max_bytes {
            return Err(lua_err(format!(
                "{what}: a tensor of {} is over the sandbox's cap of {} per tensor",
                show_bytes(one),
                show_bytes(self.max_bytes)
            )));
        }
        let fits = |m: &Self| m.bytes().checked_add(bytes).is_some_and(|t| t <= m.limit);
        if fits(self) {
            return Ok(());
        }
        lua.gc_collect()?;
        if fits(self) {
            return Ok(());
        }
        Err(lua_err(format!(
            "{what}: {} more of tensors would exceed the sandbox's tensor memory limit of {} ({} held by the script's tensors)",
            show_bytes(bytes),
            show_bytes(self.limit),
            show_bytes(self.bytes())
        )))
    }

    /// A charge of `bytes` on the live count, keeping `parents` (and `storage`) alive.
    pub(super) fn charge(
        &self,
        bytes: u64,
        parents: Vec<Arc<Charge>>,
        storage: Option<Arc<Charge>>,
    ) -> Arc<Charge> {
        self.live.fetch_add(bytes, Ordering::Relaxed);
        let depth = 1 + parents
            .iter()
            .chain(storage.iter())
            .map(|p| p.depth)
            .max()
            .unwrap_or(0);
        Arc::new(Charge {
            bytes,
            live: self.live.clone(),
            _parents: parents,
            storage,
            depth,
        })
    }
}
