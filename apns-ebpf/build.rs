//! The eBPF object is linked by `bpf-linker`, a binary cargo knows nothing about. Rebuild when
//! it changes (a new LLVM means new code), and fail early with the fix when it is missing.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            println!("cargo::error=bpf-linker not found on PATH: run `cargo xtask setup`");
        }
    }
}
