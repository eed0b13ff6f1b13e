//! [`GuardedAlloc`]: the system allocator, except for single allocations of
//! [`HUGE_ALLOCATION_BYTES`] or more, which are anonymous mappings made with `MAP_NORESERVE`.
//!
//! Why: decoders of untrusted input (`kafka-protocol`'s Kafka request decoders among them) size a
//! `Vec` from a count read off the wire before decoding a single element. A 20-byte Kafka frame
//! claiming two billion topics asks for hundreds of GiB at once; the system allocator refuses
//! anything larger than RAM plus swap, and Rust then aborts the whole process: one malformed
//! frame from anyone who can reach the port would take the node down. Mapped with
//! `MAP_NORESERVE`, such a reservation succeeds without committing memory (untouched pages cost
//! nothing); the decoder fails on the very next element because the bytes are not there, and the
//! mapping is returned. A legitimate allocation that large works the same: its pages are
//! committed as they are touched.
//!
//! Upstream: kafka-protocol-rs pull requests 152, 161 and 200 bound these capacities by the bytes
//! remaining; once a release has that, this guard is a second line of defence only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// Allocations from this size on are mappings rather than heap blocks. Below Runnel's largest
/// request frame (100 MiB), so whatever a decoder is talked into reserving, the memory it commits
/// on the heap stays below the frame cap. glibc serves blocks this large with `mmap` too, so
/// legitimate ones cost the same either way.
pub const HUGE_ALLOCATION_BYTES: usize = 64 << 20;

/// Pages are at least this aligned; a huge allocation needing more goes to the system allocator.
const PAGE: usize = 4096;

pub struct GuardedAlloc;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_ALLOCATION_BYTES && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
    // SAFETY: a fresh private anonymous mapping aliases nothing.
    match unsafe {
        mmap_anonymous(
            ptr::null_mut(),
            size,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    } {
        Ok(p) => p.cast(),
        Err(_) => ptr::null_mut(),
    }
}

unsafe fn unmap(p: *mut u8, size: usize) {
    // SAFETY: `p` and `size` are exactly a mapping made by `map` (the caller's layout says so).
    let _ = unsafe { rustix::mm::munmap(p.cast(), size) };
}

unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Anonymous mappings are zero-filled.
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: a huge layout was allocated by `map` with this size.
            unsafe { unmap(p, layout.size()) }
        } else {
            // SAFETY: forwarded unchanged.
            unsafe { System.dealloc(p, layout) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            // SAFETY: forwarded unchanged.
            return unsafe { System.realloc(p, layout, new_size) };
        }
        // Crossing into or out of (or within) the mapped range: move the bytes.
        // SAFETY: `new_layout` is valid (above); the copy covers what both blocks hold.
        unsafe {
            let q = self.alloc(new_layout);
            if !q.is_null() {
                ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
            q
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: GuardedAlloc = GuardedAlloc;

    #[test]
    fn a_reservation_larger_than_the_machine_does_not_abort() {
        // 400 GB: the system allocator refuses this and the process would abort.
        let v: Vec<[u8; 200]> = Vec::with_capacity(2_000_000_000);
        assert!(v.capacity() >= 2_000_000_000);
    }

    #[test]
    fn huge_blocks_hold_their_bytes_through_growth_and_shrinking() {
        let mut v: Vec<u8> = Vec::with_capacity(HUGE_ALLOCATION_BYTES - 16);
        v.extend_from_slice(b"0123456789");
        v.reserve(HUGE_ALLOCATION_BYTES);
        assert_eq!(&v[..], b"0123456789");
        v.shrink_to_fit();
        assert_eq!(&v[..], b"0123456789");
        let z = vec![0u8; HUGE_ALLOCATION_BYTES + 1];
        assert_eq!(z[HUGE_ALLOCATION_BYTES], 0);
    }
}
