//! The bpf(2) calls aya 0.14 does not expose for what we need: opening a link by pin path or
//! by id and reading its `bpf_link_info`, whose XDP and TCX members carry the ifindex the
//! link is attached to (aya's `LinkInfo` keeps that field private); and reading a hash map
//! in batches (`BPF_MAP_LOOKUP_BATCH`: the connection table in a few calls instead of two
//! per entry); and loading and attaching the tiny programs of the kernel feature probes
//! (`features`), which are instructions, not an ELF object.

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
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

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

/// Reads the pinned link at `path`; an error when something else is pinned there (the
/// program pin that records a netlink TC attachment, see `links`).
pub fn pinned_link(path: &Path) -> anyhow::Result<LinkFacts> {
    let fd = obj_get(path).with_context(|| format!("opening link pin {}", path.display()))?;
    if !is_link(&fd) {
        anyhow::bail!("{} is not a bpf_link", path.display());
    }
    link_info(&fd)
        .with_context(|| format!("reading link {} (BPF_OBJ_GET_INFO_BY_FD)", path.display()))
}

/// The loaded program `id` (aya 0.14 has no lookup by id: we walk the ids); `None` when no
/// program of that id is loaded.
pub fn program_by_id(id: u32) -> Option<aya::programs::ProgramInfo> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.id() == id)
}

/// Whether a pin at `path` holds a bpf_link (rather than a program or a map).
pub fn pins_a_link(path: &Path) -> bool {
    obj_get(path).is_ok_and(|fd| is_link(&fd))
}

/// Whether `fd` is a bpf_link: BPF_OBJ_GET_INFO_BY_FD answers for any BPF object, with the
/// info of its own kind, so the kind comes from the fd's `fdinfo`, where only links have a
/// `link_type` line.
fn is_link(fd: &OwnedFd) -> bool {
    let path = format!("/proc/self/fdinfo/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    std::fs::read_to_string(path)
        .is_ok_and(|info| info.lines().any(|line| line.starts_with("link_type:")))
}

/// One BPF instruction (`struct bpf_insn`), for the feature probes' tiny programs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    /// `call helper` (BPF_JMP | BPF_CALL).
    pub const fn call(helper: i32) -> Insn {
        Insn {
            code: 0x85,
            regs: 0,
            off: 0,
            imm: helper,
        }
    }

    /// `r0 = value` (BPF_ALU64 | BPF_MOV | BPF_K).
    pub const fn return_value(value: i32) -> Insn {
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: value,
        }
    }

    /// `exit` (BPF_JMP | BPF_EXIT).
    pub const fn exit() -> Insn {
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        }
    }
}

/// Loads a program of type `prog_type` made of `insns` (GPL, so every helper is open to
/// it); on failure, the error and the verifier's log.
pub fn load_program(prog_type: u32, insns: &[Insn]) -> Result<OwnedFd, (io::Error, String)> {
    /// `union bpf_attr` as BPF_PROG_LOAD reads it, up to `expected_attach_type`.
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: *b"apns_probe\0\0\0\0\0\0",
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    let mut loaded = bpf(BPF_PROG_LOAD, &mut attr);
    // Before Linux 5.11 a program's memory counts against RLIMIT_MEMLOCK, over every BPF
    // object the user has (a pinned datapath's maps are megabytes; Debian 11 gives a shell
    // 64 KiB): EPERM, even as root. aya lifts the limit and tries again for its loads; so
    // do these.
    if matches!(&loaded, Err(err) if err.raw_os_error() == Some(libc::EPERM))
        && lift_memlock_limit()
    {
        loaded = bpf(BPF_PROG_LOAD, &mut attr);
    }
    match loaded {
        // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nobody else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(err) => {
            let len = log.iter().position(|&byte| byte == 0).unwrap_or(log.len());
            Err((err, String::from_utf8_lossy(&log[..len]).into_owned()))
        }
    }
}

/// Raises this process's RLIMIT_MEMLOCK to unlimited; true if it was lower and now is not.
fn lift_memlock_limit() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0
            || limit.rlim_cur == libc::RLIM_INFINITY
        {
            return false;
        }
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0
    }
}

/// BPF_LINK_CREATE: attaches `program` to interface `ifindex` as `attach_type`, with
/// `flags`; the link lasts as long as the returned descriptor.
pub fn link_create(
    program: &OwnedFd,
    ifindex: u32,
    attach_type: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    /// `union bpf_attr` as BPF_LINK_CREATE reads it, with room for the TCX/XDP extras (zero).
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        extra: [u64; 4],
    }
    let mut attr = LinkCreate {
        prog_fd: std::os::fd::AsRawFd::as_raw_fd(program) as u32,
        target_ifindex: ifindex,
        attach_type,
        flags,
        extra: [0; 4],
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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
