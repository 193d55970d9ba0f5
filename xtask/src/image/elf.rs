//! What the dynamic loader needs to run an ELF file: its program
//! interpreter (PT_INTERP) and the libraries it names (DT_NEEDED), with the
//! search path it adds (DT_RUNPATH / DT_RPATH). Read from the program
//! headers, so stripped files (no section headers) are read as well.
//! 64-bit little-endian only: what x86_64 and aarch64 Linux run.

use std::{fs::File, os::unix::fs::FileExt as _, path::Path};

use anyhow::{Context, Result, bail, ensure};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// e.g. /lib64/ld-linux-x86-64.so.2; None for a static executable.
    pub interp: Option<String>,
    /// Library names as written (sonames, e.g. libc.so.6).
    pub needed: Vec<String>,
    /// DT_RUNPATH, else DT_RPATH, split on ':' (may hold $ORIGIN).
    pub runpath: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// Ok(None) when `path` is not an ELF file (a script, a certificate...).
pub fn read(path: &Path) -> Result<Option<Dynamic>> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut ident = [0u8; 64];
    let len = f.metadata()?.len();
    if len < 64 {
        return Ok(None);
    }
    f.read_exact_at(&mut ident, 0).with_context(|| format!("read {}", path.display()))?;
    if &ident[..4] != b"\x7fELF" {
        return Ok(None);
    }
    parse(&f, &ident, len).map(Some).with_context(|| format!("ELF {}", path.display()))
}

fn parse(f: &File, h: &[u8; 64], len: u64) -> Result<Dynamic> {
    ensure!(h[4] == 2 && h[5] == 1, "not a 64-bit little-endian ELF");
    let phoff = u64_at(h, 0x20);
    let phentsize = u16_at(h, 0x36) as u64;
    let phnum = u16_at(h, 0x38) as u64;
    ensure!(phentsize >= 56 && phnum <= 4096, "bad program header table");
    let table = read_at(f, phoff, phentsize * phnum, len)?;

    let mut out = Dynamic::default();
    let mut loads = Vec::new(); // (vaddr, offset, filesz)
    let mut dynamic = None; // (offset, filesz)
    for i in 0..phnum as usize {
        let p = &table[i * phentsize as usize..];
        let (p_type, offset, vaddr, filesz) = (u32_at(p, 0), u64_at(p, 8), u64_at(p, 16), u64_at(p, 32));
        match p_type {
            PT_LOAD => loads.push((vaddr, offset, filesz)),
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            PT_INTERP => {
                let raw = read_at(f, offset, filesz, len)?;
                let s = raw.split(|&b| b == 0).next().unwrap_or_default();
                out.interp = Some(String::from_utf8(s.to_vec()).context("interpreter path")?);
            }
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(out);
    };
    let entries = read_at(f, dyn_off, dyn_size, len)?;
    let (mut needed, mut strtab, mut strsz, mut rpath, mut runpath) = (Vec::new(), None, None, None, None);
    for e in entries.chunks_exact(16) {
        let (tag, val) = (u64_at(e, 0), u64_at(e, 8));
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_RPATH => rpath = Some(val),
            DT_RUNPATH => runpath = Some(val),
            _ => {}
        }
    }
    if needed.is_empty() && rpath.is_none() && runpath.is_none() {
        return Ok(out);
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        bail!("DT_NEEDED without DT_STRTAB/DT_STRSZ");
    };
    // DT_STRTAB is an address: the PT_LOAD segment holding it gives its offset.
    let Some(&(vaddr, offset, _)) = loads.iter().find(|(vaddr, _, filesz)| strtab >= *vaddr && strtab < vaddr + filesz)
    else {
        bail!("DT_STRTAB {strtab:#x} is in no PT_LOAD segment");
    };
    ensure!(strsz <= 64 << 20, "DT_STRSZ {strsz} too large");
    let strings = read_at(f, strtab - vaddr + offset, strsz, len)?;
    let string = |off: u64| -> Result<String> {
        let s = strings.get(off as usize..).context("string offset past DT_STRSZ")?;
        let s = s.split(|&b| b == 0).next().unwrap_or_default();
        Ok(String::from_utf8(s.to_vec())?)
    };
    for n in needed {
        out.needed.push(string(n)?);
    }
    if let Some(p) = runpath.or(rpath) {
        out.runpath = string(p)?.split(':').filter(|s| !s.is_empty()).map(String::from).collect();
    }
    Ok(out)
}

fn read_at(f: &File, offset: u64, size: u64, len: u64) -> Result<Vec<u8>> {
    ensure!(
        offset.checked_add(size).is_some_and(|end| end <= len),
        "range {offset:#x}+{size:#x} past the end of the file"
    );
    let mut buf = vec![0u8; size as usize];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_dynamic_executable_needs() {
        // This test binary: a Rust executable linked against glibc.
        let me = std::env::current_exe().unwrap();
        let d = read(&me).unwrap().expect("an ELF file");
        let interp = d.interp.expect("a dynamic executable has an interpreter");
        assert!(interp.contains("ld-linux"), "{interp}");
        assert!(d.needed.iter().any(|n| n == "libc.so.6"), "{:?}", d.needed);
    }

    #[test]
    fn reads_shared_libraries_and_skips_non_elf_files() {
        // libc names the loader and has no interpreter of its own... as a
        // library; glibc's libc.so.6 does carry PT_INTERP (it is runnable),
        // so only DT_NEEDED is checked.
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("glibc's libc.so.6");
        let d = read(libc).unwrap().unwrap();
        assert!(d.needed.iter().any(|n| n.starts_with("ld-linux")), "{:?}", d.needed);
        let script = std::env::temp_dir().join(format!("weir-elf-test-{}", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\necho this is not an ELF file at all, just text\n").unwrap();
        assert_eq!(read(&script).unwrap(), None);
        std::fs::remove_file(&script).unwrap();
    }

    #[test]
    fn a_truncated_elf_is_an_error_not_a_panic() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let cut = std::env::temp_dir().join(format!("weir-elf-cut-{}", std::process::id()));
        std::fs::write(&cut, &me[..200]).unwrap();
        assert!(read(&cut).is_err());
        std::fs::remove_file(&cut).unwrap();
    }
}
