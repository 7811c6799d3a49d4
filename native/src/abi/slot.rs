//! One stream's filter as Envoy holds it (the module pointer of the stream), and the
//! rules that keep Envoy's calls into it sound.
//!
//! Envoy calls a stream's hooks one at a time on its worker thread, but not always one
//! *after* another: a callback the filter makes from inside a hook can call back into
//! the same filter before it returns. `send_response` runs the response path (the
//! response-headers hook) and can end the stream (the destroy hook);
//! `continue_decoding` hands the body Envoy held to the body hook, and a local reply
//! further down the chain comes back to the response hooks; a callout that fails at
//! once is answered inside `http_callout`. A second `&mut` to the filter while the
//! first is live would be undefined behaviour, so:
//!
//! - a hook that arrives while another of the same filter runs does not reach the
//!   filter: the caller answers it from the slot's own state ([`Entered::Busy`]), and
//!   a callout's answer is kept and delivered once the running hook has returned;
//! - a destroy that arrives while a hook runs only marks the slot; the outermost hook
//!   frees it on its way out, and nothing touches the stream after that;
//! - after a panic the filter is never called again ([`Entered::Poisoned`]).

use std::cell::{Cell, RefCell, UnsafeCell};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::handles::{log, CalloutResponse, Stream};
use super::raw::LogLevel;
use super::traits::HttpFilter;

pub(crate) struct FilterSlot {
    filter: UnsafeCell<Box<dyn HttpFilter>>,
    /// A hook of this filter is on the stack.
    running: Cell<bool>,
    /// Envoy destroyed the filter while a hook ran.
    destroyed: Cell<bool>,
    /// A hook panicked.
    poisoned: Cell<bool>,
    /// Callout answers that arrived while a hook ran, for the filter once it returns.
    deferred: RefCell<Vec<(u64, Option<CalloutResponse>)>>,
}

/// What became of a call into the filter.
pub(crate) enum Entered<T> {
    /// It ran and returned; the stream is still Envoy's to use.
    Ran(T),
    /// Not run: another hook of this filter is running (Envoy called back from inside it).
    Busy,
    /// Not run: an earlier hook panicked.
    Poisoned,
    /// It panicked now (logged): the caller fails the stream closed.
    Panicked,
    /// Envoy destroyed the filter while it ran: the stream must not be touched again.
    Destroyed,
}

/// Logs a caught panic; logging must not unwind either.
pub(crate) fn log_panic(hook: &str) {
    let _ = catch_unwind(|| log(LogLevel::Critical, &format!("wsgiproxy: panic caught in {hook}")));
}

impl FilterSlot {
    /// The module pointer Envoy keeps for a new stream's filter.
    pub(crate) fn into_raw(filter: Box<dyn HttpFilter>) -> *const c_void {
        let slot = FilterSlot {
            filter: UnsafeCell::new(filter),
            running: Cell::new(false),
            destroyed: Cell::new(false),
            poisoned: Cell::new(false),
            deferred: RefCell::new(Vec::new()),
        };
        Box::into_raw(Box::new(slot)) as *const c_void
    }

    /// Runs `body` on the filter behind `ptr` (see the module's rules), then delivers any
    /// callout answer that arrived meanwhile. `None` for a null pointer.
    ///
    /// # Safety
    /// `ptr` must come from [`FilterSlot::into_raw`] and not be freed yet, and the call
    /// must be on the stream's worker thread (Envoy's contract for every stream hook).
    pub(crate) unsafe fn enter<T>(
        ptr: *const c_void,
        stream: &Stream,
        hook: &str,
        body: impl FnOnce(&mut dyn HttpFilter) -> T,
    ) -> Option<Entered<T>> {
        // SAFETY: per the contract, a live slot; only shared references to it are made,
        // and the filter inside is reached through its UnsafeCell alone.
        let slot = unsafe { (ptr as *const FilterSlot).as_ref() }?;
        if slot.running.get() {
            return Some(Entered::Busy);
        }
        if slot.poisoned.get() {
            return Some(Entered::Poisoned);
        }
        slot.running.set(true);
        // SAFETY: `running` was false, so no other reference to the filter is live, and
        // none is made until it is false again (re-entrant hooks stop at `Busy` above).
        let outcome = catch_unwind(AssertUnwindSafe(|| body(unsafe { &mut **slot.filter.get() })));
        let outcome = match outcome {
            Ok(value) => slot.deliver_deferred(stream).map(|()| value),
            Err(_) => Err(()),
        };
        slot.running.set(false);
        if outcome.is_err() {
            slot.poisoned.set(true);
            log_panic(hook);
        }
        if slot.destroyed.get() {
            // SAFETY: Envoy asked to destroy the slot during this hook and `destroy` left
            // it to us; nothing refers to it any more, and Envoy will not pass it again.
            drop(unsafe { Box::from_raw(ptr as *mut FilterSlot) });
            return Some(Entered::Destroyed);
        }
        Some(match outcome {
            Ok(value) => Entered::Ran(value),
            Err(()) => Entered::Panicked,
        })
    }

    /// Answers that came while a hook ran, in order; stops at a panic or a destroy.
    fn deliver_deferred(&self, stream: &Stream) -> Result<(), ()> {
        loop {
            if self.destroyed.get() {
                return Ok(());
            }
            let next = {
                let mut deferred = self.deferred.borrow_mut();
                (!deferred.is_empty()).then(|| deferred.remove(0))
            };
            let Some((id, response)) = next else { return Ok(()) };
            // SAFETY: called only from `enter`, while `running` is true and the body's
            // reference to the filter has ended.
            let filter = unsafe { &mut **self.filter.get() };
            catch_unwind(AssertUnwindSafe(|| filter.on_callout_done(stream, id, response))).map_err(|_| ())?;
        }
    }

    /// Keeps a callout answer that arrived while a hook of this filter ran.
    ///
    /// # Safety
    /// As for [`FilterSlot::enter`].
    pub(crate) unsafe fn defer_callout_answer(ptr: *const c_void, id: u64, response: Option<CalloutResponse>) {
        // SAFETY: per the contract; a shared reference, as in `enter`.
        if let Some(slot) = unsafe { (ptr as *const FilterSlot).as_ref() } {
            slot.deferred.borrow_mut().push((id, response));
        }
    }

    /// Envoy's destroy hook: frees the slot now, or, when a hook of it is running, marks
    /// it for that hook to free on its way out.
    ///
    /// # Safety
    /// As for [`FilterSlot::enter`]; Envoy destroys each filter once.
    pub(crate) unsafe fn destroy(ptr: *const c_void) {
        // SAFETY: per the contract.
        let Some(slot) = (unsafe { (ptr as *const FilterSlot).as_ref() }) else { return };
        if slot.running.get() {
            slot.destroyed.set(true);
        } else {
            // SAFETY: no hook is running, so no reference to the slot is live.
            drop(unsafe { Box::from_raw(ptr as *mut FilterSlot) });
        }
    }
}
