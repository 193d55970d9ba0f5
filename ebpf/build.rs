// bpf-linker is the linker for the bpf target; make cargo rebuild this crate
// when it changes (as aya-template does), so a linker upgrade is picked up.
fn main() {
    let bpf_linker = which::which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().expect("utf-8 path"));
    // bpf-linker's default, `-bpf-expand-memcpy-in-order`, makes LLVM leave
    // every memset it cannot give to that expander (it takes memcpy only)
    // as a call to the byte-at-a-time `memset` builtin: the zeroing of a
    // flow or an event, which LLVM merges from plain field stores, cost a
    // loop of up to 64 rounds on every packet. Without it, LLVM writes
    // such a memset (and memcpy) of constant size as plain stores.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
