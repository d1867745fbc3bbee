//! The bpf(2) calls aya 0.14 does not expose for what we need: opening a link by pin path or
//! by id and reading its `bpf_link_info`, whose XDP and TCX members carry the ifindex the
//! link is attached to (aya's `LinkInfo` keeps that field private); and reading a hash map
//! in batches (`BPF_MAP_LOOKUP_BATCH`: the connection table in a few calls instead of two
//! per entry).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use anyhow::Context as _;
use aya_obj::generated::bpf_link_info;

/// `enum bpf_cmd` values (stable UAPI).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr` as BPF_OBJ_GET reads it.
#[repr(C)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` as BPF_OBJ_GET_INFO_BY_FD reads it.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What the kernel says about a pinned link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub link_id: u32,
    pub program_id: u32,
    /// The interface an XDP or TCX link is attached to; 0 once that interface was deleted
    /// (the link is then defunct).
    pub ifindex: u32,
}

/// Reads the pinned link at `path`.
pub fn pinned_link(path: &Path) -> anyhow::Result<LinkFacts> {
    let fd = obj_get(path).with_context(|| format!("opening link pin {}", path.display()))?;
    link_info(&fd)
        .with_context(|| format!("reading link {} (BPF_OBJ_GET_INFO_BY_FD)", path.display()))
}

/// Reads the link with kernel id `id`.
pub fn link_by_id(id: u32) -> anyhow::Result<LinkFacts> {
    /// `union bpf_attr` as BPF_LINK_GET_FD_BY_ID reads it.
    #[repr(C)]
    struct GetFdById {
        link_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = GetFdById {
        link_id: id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)
        .with_context(|| format!("opening link {id} (BPF_LINK_GET_FD_BY_ID)"))?;
    // SAFETY: BPF_LINK_GET_FD_BY_ID returned a new file descriptor that nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    link_info(&fd).with_context(|| format!("reading link {id} (BPF_OBJ_GET_INFO_BY_FD)"))
}

fn link_info(fd: &OwnedFd) -> io::Result<LinkFacts> {
    // SAFETY: a plain-data bindgen struct; all zeroes is a valid value.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(fd) as u32,
        info_len: size_of::<bpf_link_info>() as u32,
        info: &mut info as *mut bpf_link_info as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // SAFETY: XDP and TCX links fill `xdp.ifindex` / `tcx.ifindex`, which share the first
    // word of the union; for other link types this reads whatever u32 is there: callers only
    // read it of XDP and TCX links.
    let ifindex = unsafe { info.__bindgen_anon_1.xdp.ifindex };
    Ok(LinkFacts {
        link_id: info.id,
        program_id: info.prog_id,
        ifindex,
    })
}

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it.
#[repr(C)]
struct Batch {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the hash map `fd` (keys and values of `key_size` and `value_size`
/// bytes), read `per_call` at a time with BPF_MAP_LOOKUP_BATCH: the keys and the values, each
/// entry's bytes one after the other. The kernel walks the map bucket by bucket, each under
/// its lock, so an entry changed meanwhile comes at most once.
pub fn lookup_batch(
    fd: std::os::fd::BorrowedFd,
    key_size: usize,
    value_size: usize,
    per_call: usize,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut key_buf = vec![0u8; per_call * key_size];
    let mut value_buf = vec![0u8; per_call * value_size];
    // The batch token: a bucket number for hash maps; a key's room is plenty.
    let mut token_in = vec![0u8; key_size.max(8)];
    let mut token_out = vec![0u8; key_size.max(8)];
    let mut first = true;
    loop {
        let mut attr = Batch {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: key_buf.as_mut_ptr() as u64,
            values: value_buf.as_mut_ptr() as u64,
            count: per_call as u32,
            map_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
            elem_flags: 0,
            flags: 0,
        };
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            // The last batch: what it filled is in `count`.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => true,
            Err(err) => return Err(err),
        };
        let count = attr.count as usize;
        keys.extend_from_slice(&key_buf[..count * key_size]);
        values.extend_from_slice(&value_buf[..count * value_size]);
        if done {
            return Ok((keys, values));
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}

fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    let mut attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly laid-out prefix of `union bpf_attr` for `cmd`; the
    // kernel reads at most size_of::<T>() bytes of it and writes only through the pointers
    // it holds, which point at live buffers of the advertised sizes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
