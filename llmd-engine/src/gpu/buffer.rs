//! Typed device memory.

use std::marker::PhantomData;

use super::GpuApi;

/// An element type device buffers hold.
///
/// # Safety
/// Plain data: no padding, every bit pattern a valid value (so its slices can be viewed
/// as bytes and filled from bytes).
pub unsafe trait Elem: Copy + Default + Send + Sync + 'static {}

// SAFETY: primitive integers and floats have no padding and no invalid bit patterns.
unsafe impl Elem for u8 {}
// SAFETY: as above.
unsafe impl Elem for u16 {}
// SAFETY: as above.
unsafe impl Elem for u32 {}
// SAFETY: as above.
unsafe impl Elem for f32 {}

pub(crate) fn bytes<T: Elem>(x: &[T]) -> &[u8] {
    // SAFETY: T is plain data (Elem), so its memory is `size_of_val(x)` initialised bytes.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), std::mem::size_of_val(x)) }
}

pub(crate) fn bytes_mut<T: Elem>(x: &mut [T]) -> &mut [u8] {
    // SAFETY: as above, and any bytes written make valid T values (Elem).
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast(), std::mem::size_of_val(x)) }
}

/// `len` values of `T` in device memory, freed when dropped.
pub struct DeviceBuffer<T: Elem, A: GpuApi> {
    ptr: u64,
    len: usize,
    _mem: A::Mem,
    _t: PhantomData<T>,
}

impl<T: Elem, A: GpuApi> std::fmt::Debug for DeviceBuffer<T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer").field("ptr", &format_args!("{:#x}", self.ptr)).field("len", &self.len).finish()
    }
}

impl<T: Elem, A: GpuApi> DeviceBuffer<T, A> {
    pub(crate) fn new(ptr: u64, len: usize, mem: A::Mem) -> Self {
        DeviceBuffer { ptr, len, _mem: mem, _t: PhantomData }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of the first value.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The device address of value `i` (`i <= len`, one past the end allowed).
    pub fn ptr_at(&self, i: usize) -> u64 {
        debug_assert!(i <= self.len);
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}
