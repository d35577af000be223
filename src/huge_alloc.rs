//! Memory: a global allocator that keeps a hostile request from aborting the
//! process, and the system allocator tuning a broker needs.
//!
//! Measured need for `unsafe`: `kafka-protocol` sizes a decoded array with
//! `Vec::with_capacity(n)` from the count on the wire, before reading any
//! element. A 12-byte Metadata v1 request declaring 2^31 topics made the
//! allocator ask for 154 GB, which the kernel refused, and Rust aborts on a
//! failed allocation (no panic, no error to catch): one client could kill the
//! broker. Here, allocations of 1 GiB or more are served by an anonymous
//! `mmap` with `MAP_NORESERVE`: address space is reserved but no memory is
//! committed until written. The decoder fails on the missing elements a few
//! bytes later and the untouched reservation is unmapped. Everything smaller
//! goes to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations from this size on are reserved lazily.
const HUGE: usize = 1 << 30;
/// `mmap` returns page-aligned memory; larger alignments go to the system allocator.
const PAGE: usize = 4096;

pub struct ReservingAllocator;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

// SAFETY: huge blocks come from mmap and return to munmap with the same size
// (the layout passed to dealloc is the one used to allocate); mmap memory is
// page aligned and zero filled, which satisfies any layout with align <= PAGE
// and alloc_zeroed. All other blocks are handled by `System` unchanged.
unsafe impl GlobalAlloc for ReservingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_huge(&layout) {
            return unsafe { System.alloc(layout) };
        }
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let block = unsafe { libc::mmap(std::ptr::null_mut(), layout.size(), prot, flags, -1, 0) };
        if block == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            block.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            unsafe { self.alloc(layout) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

/// glibc gives each thread that contends for the heap an arena of its own (up to
/// eight per core) and keeps freed record batches in them: three nodes of a
/// local cluster held 450-600 MiB each after a produce burst. Two arenas
/// measured the same produce throughput with a third less resident memory.
const MALLOC_ARENAS: libc::c_int = 2;

/// Limits the system allocator's arenas; call once at startup, before threads start.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator parameters; M_ARENA_MAX with a
    // positive value is valid at any time, and no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// Returns memory the system allocator holds free to the kernel.
pub fn release_free_memory() {
    // SAFETY: malloc_trim is thread safe and only releases memory no
    // allocation uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_blocks_are_reserved_not_committed() {
        let layout = Layout::from_size_align(200 << 30, 8).unwrap();
        let allocator = ReservingAllocator;
        unsafe {
            let block = allocator.alloc(layout);
            assert!(!block.is_null(), "a 200 GiB reservation succeeds");
            block.write(7);
            assert_eq!(block.read(), 7);
            let grown = allocator.realloc(block, layout, (201 << 30) as usize);
            assert_eq!(grown.read(), 7);
            allocator.dealloc(grown, Layout::from_size_align(201 << 30, 8).unwrap());
            let small = Layout::from_size_align(64, 8).unwrap();
            let block = allocator.alloc_zeroed(small);
            assert_eq!(block.read(), 0);
            allocator.dealloc(block, small);
        }
    }
}
