//! Where the CPU backend keeps its weights and KV caches: slices handed out of a few large
//! chunks, which on Linux are aligned to 2 MiB and advised as transparent huge pages.
//!
//! Why: decoding streams every weight once per token, and with 4 KiB pages that is a TLB miss
//! per 4 KiB (a two-level page walk in a virtual machine). One matrix is too small for a huge
//! page of its own (a SmolLM2-135M layer's seven matrices are 2.2 MB together), so they share
//! chunks. On this project's 2-core machine, reading 106 MB on two threads ran at 25 GB/s on
//! 4 KiB pages and 38 GB/s on huge pages; SmolLM2's decode gained about 9% (bench figures in
//! README.md). Elsewhere (other systems, wasm) each slice is its own allocation, as a `Vec`
//! would be.

use crate::error::{Error, Result};
use bytemuck::Zeroable;
use std::ptr::NonNull;
use std::sync::Arc;

/// A chunk's size and alignment where huge pages are advised: whole huge pages, and enough of
/// them that a model's matrices take a few chunks.
#[cfg(target_os = "linux")]
const CHUNK: Option<usize> = Some(64 << 20);
#[cfg(not(target_os = "linux"))]
const CHUNK: Option<usize> = None;
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// Every slice starts on a cache line.
const ALIGN: usize = 64;

/// One allocation slices are cut from, zeroed (pages the system backs when first touched);
/// freed when its last slice is.
struct Chunk {
    ptr: NonNull<u8>,
    bytes: usize,
}

// SAFETY: a chunk is plain memory; who may touch which bytes is up to the slices (each owns a
// disjoint range).
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    /// `bytes` (a multiple of HUGE_PAGE) mapped at a HUGE_PAGE boundary and advised as huge
    /// pages: fresh anonymous pages are zero, and backed only where touched.
    #[cfg(target_os = "linux")]
    fn new(bytes: usize) -> Result<Chunk> {
        let failed = || {
            Error::Invalid(format!(
                "cannot map {bytes} bytes for weights and KV caches"
            ))
        };
        let mapped = bytes.checked_add(HUGE_PAGE).ok_or_else(failed)?;
        // SAFETY: a new private anonymous mapping; then the parts of it before and after the
        // aligned range are unmapped, and the advice covers only that range.
        unsafe {
            let raw = libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if raw == libc::MAP_FAILED {
                return Err(failed());
            }
            let head = (raw as usize).next_multiple_of(HUGE_PAGE) - raw as usize;
            let start = raw.cast::<u8>().add(head);
            if head > 0 {
                libc::munmap(raw, head);
            }
            if mapped - head > bytes {
                libc::munmap(start.add(bytes).cast(), mapped - head - bytes);
            }
            // Only advice: where the kernel has no huge pages (or THP is off) this fails or
            // does nothing, and the memory is ordinary pages.
            libc::madvise(start.cast(), bytes, libc::MADV_HUGEPAGE);
            Ok(Chunk {
                ptr: NonNull::new(start).ok_or_else(failed)?,
                bytes,
            })
        }
    }

    /// `bytes` from the system allocator, zeroed.
    #[cfg(not(target_os = "linux"))]
    fn new(bytes: usize) -> Result<Chunk> {
        let layout = Chunk::layout(bytes)?;
        // SAFETY: the layout's size is not zero.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or_else(|| {
            Error::Invalid(format!(
                "cannot allocate {bytes} bytes for weights and KV caches"
            ))
        })?;
        Ok(Chunk { ptr, bytes })
    }

    #[cfg(not(target_os = "linux"))]
    fn layout(bytes: usize) -> Result<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(bytes.max(1), ALIGN)
            .map_err(|_| Error::Invalid(format!("{bytes} bytes overflow the address space")))
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: mapped or allocated by `new` with these bytes, and no slice is left.
        #[cfg(target_os = "linux")]
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.bytes);
        }
        #[cfg(not(target_os = "linux"))]
        if let Ok(layout) = Chunk::layout(self.bytes) {
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// The chunk being cut, and how much of it is used.
#[derive(Default)]
pub struct Arena {
    current: Option<(Arc<Chunk>, usize)>,
}

impl Arena {
    /// `len` zeros, in the current chunk if they fit, else in a new one.
    pub fn slice<T: Zeroable>(&mut self, len: usize) -> Result<Slice<T>> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_next_multiple_of(ALIGN))
            .ok_or_else(|| Error::Invalid(format!("{len} values overflow the address space")))?;
        let Some(chunk) = CHUNK else {
            let chunk = Arc::new(Chunk::new(bytes)?);
            return Ok(Slice::new(chunk, 0, len));
        };
        let current = match self.current.take() {
            Some((c, used)) if used + bytes <= c.bytes => (c, used),
            _ => {
                #[cfg(target_os = "linux")]
                let chunk = bytes
                    .max(chunk)
                    .checked_next_multiple_of(HUGE_PAGE)
                    .ok_or_else(|| {
                        Error::Invalid(format!("{len} values overflow the address space"))
                    })?;
                (Arc::new(Chunk::new(chunk)?), 0)
            }
        };
        let (chunk, used) = self.current.insert(current);
        let slice = Slice::new(chunk.clone(), *used, len);
        *used += bytes;
        Ok(slice)
    }
}

/// `len` values of type T in a chunk, owned alone: no other slice covers its bytes.
pub struct Slice<T> {
    /// Holds the memory: a chunk is freed with its last slice.
    _chunk: Arc<Chunk>,
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: a slice owns its values as a `Vec<T>` would.
unsafe impl<T: Send> Send for Slice<T> {}
unsafe impl<T: Sync> Sync for Slice<T> {}

impl<T: Zeroable> Slice<T> {
    /// The `len` values (zeros: chunks are zeroed) from byte `offset` of `chunk`.
    fn new(chunk: Arc<Chunk>, offset: usize, len: usize) -> Slice<T> {
        // SAFETY: `offset..offset + len * size_of::<T>()` is within the chunk (the arena checked)
        // and no other slice's, and the offset is a multiple of ALIGN, which is at least T's
        // alignment.
        let ptr = unsafe { NonNull::new_unchecked(chunk.ptr.as_ptr().add(offset).cast()) };
        Slice {
            _chunk: chunk,
            ptr,
            len,
        }
    }
}

impl<T> std::ops::Deref for Slice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the range is this slice's and holds T values (zero bytes are a T, `Zeroable`,
        // and only T values are written), and `_chunk` keeps the memory alive.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::ops::DerefMut for Slice<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` is the only way to the range.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slices are zeroed, aligned (a chunk's first to a huge page on Linux), disjoint (writing
    /// one leaves the others as they were), and outlive the arena; one larger than a chunk gets
    /// its own.
    #[test]
    fn slices_are_zeroed_disjoint_and_aligned() {
        let mut arena = Arena::default();
        let mut slices: Vec<Slice<u32>> = (1..200).map(|n| arena.slice(n * 997).unwrap()).collect();
        let mut halves: Slice<u16> = arena.slice(3).unwrap();
        let big = CHUNK.unwrap_or(1 << 20) / 4 + 5;
        let mut large: Slice<u32> = arena.slice(big).unwrap();
        drop(arena);
        #[cfg(target_os = "linux")]
        assert_eq!(slices[0].as_ptr() as usize % HUGE_PAGE, 0);
        assert!(large.iter().all(|&v| v == 0));
        large[big - 1] = 7;
        halves.copy_from_slice(&[1, 2, 3]);
        for (i, s) in slices.iter_mut().enumerate() {
            assert_eq!(s.len(), (i + 1) * 997);
            assert_eq!(s.as_ptr() as usize % ALIGN, 0);
            assert!(
                s.iter().all(|&v| v == 0),
                "slice {i} was not zeroed or was overwritten"
            );
            s.fill(i as u32 + 1);
        }
        for (i, s) in slices.iter().enumerate() {
            assert!(
                s.iter().all(|&v| v == i as u32 + 1),
                "slice {i} was overwritten"
            );
        }
        assert_eq!(&halves[..], &[1, 2, 3]);
        assert_eq!(large[big - 1], 7);
    }
}
