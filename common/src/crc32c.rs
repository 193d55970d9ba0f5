//! SCTP's CRC32c (Castagnoli) updated for changed ports, without reading
//! the packet again.
//!
//! A CRC is linear: for two messages of one length, the XOR of their CRCs
//! is the raw CRC (no initial value, no final XOR) of the XOR of the
//! messages. Ports are the first four bytes of an SCTP packet, so a packet
//! of `len` bytes whose ports change by the four bytes `d` has its CRC
//! change by `d(x) * x^(8 * len) mod P` (`d` shifted past the rest of the
//! packet and the 32 bits a CRC appends). The power of `x` comes from two
//! tables of 256 entries each (the low and high byte of `len`), so an
//! update is two multiplications modulo `P`, whatever the packet's length.
//!
//! Polynomials are in the reflected order SCTP uses: bit 31 holds `x^0`,
//! bit 0 `x^31`, and four bytes of a packet read as a little-endian `u32`
//! are the polynomial they stand for. The CRC is stored little-endian.

/// CRC32c's polynomial, reflected.
pub const POLY: u32 = 0x82f6_3b78;

/// `a * b mod P`. Fixed iterations and no branches: a BPF program runs it
/// whole, and the verifier walks it once.
#[inline(always)]
pub const fn mul(a: u32, b: u32) -> u32 {
    let mut product = 0u32;
    let mut b = b;
    let mut i = 0;
    while i < 32 {
        // Bit 31 - i of `a` is the coefficient of x^i; `b` is b * x^i.
        product ^= b & 0u32.wrapping_sub((a >> (31 - i)) & 1);
        b = (b >> 1) ^ (POLY & 0u32.wrapping_sub(b & 1));
        i += 1;
    }
    product
}

/// `x^0`: the product's identity.
const ONE: u32 = 1 << 31;
/// `x^8`: one byte.
const X8: u32 = ONE >> 8;

const fn powers(step: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    table[0] = ONE;
    let mut i = 1;
    while i < 256 {
        table[i] = mul(table[i - 1], step);
        i += 1;
    }
    table
}

/// `x^(8 * n) mod P` for `n` in 0..256.
pub static SHIFT_LO: [u32; 256] = powers(X8);
/// `x^(8 * 256 * n) mod P` for `n` in 0..256.
pub static SHIFT_HI: [u32; 256] = powers(mul(powers(X8)[255], X8));

/// How the CRC32c of an SCTP packet of `len` bytes (common header and
/// chunks) changes when its first four bytes change by `xor` (the old bytes
/// XOR the new ones, read as a little-endian `u32`). XOR it into the CRC as
/// read little-endian from the checksum field.
#[inline(always)]
pub fn port_change(xor: u32, len: u16) -> u32 {
    mul(mul(xor, SHIFT_LO[(len & 0xff) as usize]), SHIFT_HI[(len >> 8) as usize])
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// CRC32c bit by bit, as RFC 3309 defines it for SCTP.
    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in data {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ POLY } else { crc >> 1 };
            }
        }
        !crc
    }

    /// Bytes of a simple generator: the tests need no crate for noise.
    fn noise(seed: u32, len: usize) -> Vec<u8> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as u8
            })
            .collect()
    }

    #[test]
    fn rfc_3720_check_value() {
        // iSCSI's CRC32c test vector (RFC 3720 B.4): 32 bytes of zeros.
        assert_eq!(crc32c(&[0; 32]), 0x8a91_36aa);
    }

    #[test]
    fn a_port_change_moves_the_crc_as_a_full_computation_does() {
        // Every length an SCTP packet can have (12-byte header at least),
        // stepping through both tables, the two edges included.
        let lens = (12..1600).chain((1600..65536).step_by(251)).chain([65535]);
        for (i, len) in lens.enumerate() {
            let mut packet = noise(i as u32, len);
            let before = crc32c(&packet);
            let new_ports = noise(i as u32 + 7, 4);
            let mut xor = [0u8; 4];
            for (k, x) in xor.iter_mut().enumerate() {
                *x = packet[k] ^ new_ports[k];
            }
            packet[..4].copy_from_slice(&new_ports);
            let updated = before ^ port_change(u32::from_le_bytes(xor), len as u16);
            assert_eq!(updated, crc32c(&packet), "length {len}");
        }
    }

    #[test]
    fn with_the_checksum_field_zeroed_as_sctp_computes_it() {
        // SCTP's CRC covers its packet with the checksum field (bytes 8..12)
        // zero; a changed source port alone (bytes 0..2).
        let mut packet = noise(3, 36);
        packet[8..12].fill(0);
        let crc = crc32c(&packet);
        packet[8..12].copy_from_slice(&crc.to_le_bytes());
        let field = u32::from_le_bytes(packet[8..12].try_into().unwrap());
        let xor = u32::from_le_bytes([packet[0] ^ 0x9c, packet[1] ^ 0x40, 0, 0]);
        packet[0..2].copy_from_slice(&[0x9c, 0x40]);
        let updated = field ^ port_change(xor, 36);
        let mut zeroed = packet.clone();
        zeroed[8..12].fill(0);
        assert_eq!(updated, crc32c(&zeroed));
    }

    #[test]
    fn no_change_no_delta() {
        assert_eq!(port_change(0, 1500), 0);
        assert_eq!(mul(ONE, 0x1234_5678), 0x1234_5678);
    }
}
