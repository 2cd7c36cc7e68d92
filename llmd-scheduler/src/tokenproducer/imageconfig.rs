//! An image's dimensions from its base64 payload, as llm-d-router reads them: Go's
//! streaming `base64.StdEncoding` decoder feeding `image.DecodeConfig` with the decoders
//! `mm_estimate.go` registers (GIF, JPEG, PNG; WebP and others are not registered there,
//! so their dimensions are unknown and the estimator falls back to its default).
//!
//! Decoding is streamed so only the header is decoded, and so the outcome is Go's: bytes
//! before the first bad base64 quantum are usable, a header the payload ends in (or breaks
//! off in) is not. The header checks are the Go decoders' config paths, checksum (PNG) and
//! segment checks (JPEG) included: an image Go refuses falls back to the default here too.
//!
//! Written here rather than with the `base64` crate: that crate decodes all or nothing,
//! while Go's stream yields the prefix before an error.

/// Go's streaming base64 decoder (`base64.NewDecoder(base64.StdEncoding, r)`): `\r` and `\n`
/// are skipped, 4-character quanta decode to bytes until the input ends (a partial quantum
/// yields nothing), a character outside the alphabet appears, or a padded quantum ends it.
///
/// Not reproduced (exotic): Go decodes in 1 024-character chunks, so after a padded
/// quantum that ends a chunk it goes on decoding the next; here a padded quantum always
/// ends the stream.
pub(crate) struct B64Stream<'a> {
    src: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    head: usize,
    done: bool,
}

fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

impl<'a> B64Stream<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        B64Stream { src: src.as_bytes(), pos: 0, out: Vec::new(), head: 0, done: false }
    }

    fn next_char(&mut self) -> Option<u8> {
        while let Some(&c) = self.src.get(self.pos) {
            self.pos += 1;
            if c != b'\r' && c != b'\n' {
                return Some(c);
            }
        }
        None
    }

    // Decodes one quantum into `out`, or ends the stream.
    fn quantum(&mut self) {
        let mut v = [0u32; 4];
        for j in 0..4 {
            let Some(c) = self.next_char() else {
                self.done = true;
                return;
            };
            if c == b'=' {
                // "xx==" or "xxx=" end the data with 1 or 2 bytes; "=" earlier is corrupt.
                if j < 2 || (j == 2 && self.next_char() != Some(b'=')) {
                    self.done = true;
                    return;
                }
                let val = v[0] << 18 | v[1] << 12 | v[2] << 6;
                let bytes = [(val >> 16) as u8, (val >> 8) as u8];
                self.out.extend_from_slice(&bytes[..j - 1]);
                self.done = true;
                return;
            }
            match b64_value(c) {
                Some(x) => v[j] = u32::from(x),
                None => {
                    self.done = true;
                    return;
                }
            }
        }
        let val = v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3];
        self.out.extend_from_slice(&[(val >> 16) as u8, (val >> 8) as u8, val as u8]);
    }

    // Buffers `n` unread bytes if the stream has them.
    fn fill(&mut self, n: usize) -> bool {
        if self.head > 1 << 16 {
            // Drop what was read so skipping a large segment does not hold it all.
            self.out.drain(..self.head);
            self.head = 0;
        }
        while self.out.len() - self.head < n && !self.done {
            self.quantum();
        }
        self.out.len() - self.head >= n
    }

    /// The next `n` bytes without consuming them (`bufio.Reader.Peek`).
    pub(crate) fn peek(&mut self, n: usize) -> Option<&[u8]> {
        if !self.fill(n) {
            return None;
        }
        Some(&self.out[self.head..self.head + n])
    }

    /// The next `n` bytes (`io.ReadFull`).
    pub(crate) fn read(&mut self, n: usize) -> Option<&[u8]> {
        if !self.fill(n) {
            return None;
        }
        let start = self.head;
        self.head += n;
        Some(&self.out[start..start + n])
    }

    fn read_byte(&mut self) -> Option<u8> {
        self.read(1).map(|b| b[0])
    }

    fn skip(&mut self, mut n: usize) -> Option<()> {
        while n > 0 {
            let k = n.min(4096);
            self.read(k)?;
            n -= k;
        }
        Some(())
    }
}

/// `image.DecodeConfig` over the formats registered: the width and height from the
/// header, `None` when the format is not one of them or its decoder fails.
pub(crate) fn decode_config(s: &mut B64Stream<'_>) -> Option<(i64, i64)> {
    // Sniffed in registration order; the magics do not overlap. "GIF8?a": '?' is any byte.
    if s.peek(6).is_some_and(|b| &b[..4] == b"GIF8" && b[5] == b'a') {
        return gif(s);
    }
    if s.peek(2) == Some(&b"\xff\xd8"[..]) {
        return jpeg(s);
    }
    if s.peek(8) == Some(PNG_MAGIC) {
        return png(s);
    }
    None
}

/// `image/gif.DecodeConfig`: the logical screen size; the global color table must be there.
fn gif(s: &mut B64Stream<'_>) -> Option<(i64, i64)> {
    let h = s.read(13)?;
    if &h[..6] != b"GIF87a" && &h[..6] != b"GIF89a" {
        return None;
    }
    let w = i64::from(h[6]) | i64::from(h[7]) << 8;
    let ht = i64::from(h[8]) | i64::from(h[9]) << 8;
    let fields = h[10];
    if fields & 0x80 != 0 {
        s.read(3 * (1usize << (1 + (fields & 7))))?;
    }
    Some((w, ht))
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// CRC-32 (IEEE), as PNG chunks carry it.
struct Crc32(u32);

impl Crc32 {
    fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            let mut c = (self.0 ^ u32::from(b)) & 0xff;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            self.0 = (self.0 >> 8) ^ c;
        }
    }

    fn sum(&self) -> u32 {
        !self.0
    }
}

// The chunk's stored checksum matches what was read of it.
fn png_verify(s: &mut B64Stream<'_>, crc: &Crc32) -> Option<()> {
    let b = s.read(4)?;
    (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) == crc.sum()).then_some(())
}

/// `image/png.DecodeConfig`: chunks up to IHDR (up to PLTE for a paletted image), each
/// checked as the decoder checks it, checksums included.
fn png(s: &mut B64Stream<'_>) -> Option<(i64, i64)> {
    #[derive(PartialEq, PartialOrd)]
    enum Stage {
        Start,
        Ihdr,
        Plte,
    }
    s.read(8)?;
    let mut stage = Stage::Start;
    let (mut width, mut height) = (0i64, 0i64);
    let mut paletted = false;
    let mut color_valid = false;
    let mut depth = 0u32;
    loop {
        let head = s.read(8)?;
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let ty = [head[4], head[5], head[6], head[7]];
        let mut crc = Crc32::new();
        crc.update(&ty);
        match &ty {
            b"IHDR" => {
                if stage != Stage::Start || length != 13 {
                    return None;
                }
                stage = Stage::Ihdr;
                let d: [u8; 13] = s.read(13)?.try_into().ok()?;
                crc.update(&d);
                if d[10] != 0 || d[11] != 0 || d[12] > 1 {
                    return None;
                }
                let w = i32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                let h = i32::from_be_bytes([d[4], d[5], d[6], d[7]]);
                if w <= 0 || h <= 0 {
                    return None;
                }
                depth = u32::from(d[8]);
                // Valid (bit depth, color type) pairs; color type 3 is paletted.
                (color_valid, paletted) = match (d[8], d[9]) {
                    (1 | 2 | 4, 0) | (8, 0 | 2 | 4 | 6) | (16, 0 | 2 | 4 | 6) => (true, false),
                    (1 | 2 | 4 | 8, 3) => (true, true),
                    _ => (false, false),
                };
                if !color_valid {
                    return None;
                }
                (width, height) = (i64::from(w), i64::from(h));
                png_verify(s, &crc)?;
            }
            b"PLTE" => {
                if stage != Stage::Ihdr {
                    return None;
                }
                stage = Stage::Plte;
                let np = length / 3;
                if length % 3 != 0 || np == 0 || np > 256 || np > 1 << depth {
                    return None;
                }
                // Only reached for paletted images (others stop after IHDR): accepted.
                let d = s.read(3 * np as usize)?;
                crc.update(d);
                png_verify(s, &crc)?;
            }
            // tRNS, IDAT and IEND cannot come before the config is known: out of order.
            b"tRNS" | b"IDAT" | b"IEND" => return None,
            _ => {
                if length > 0x7fff_ffff {
                    return None;
                }
                let mut left = length as usize;
                while left > 0 {
                    let k = left.min(4096);
                    crc.update(s.read(k)?);
                    left -= k;
                }
                png_verify(s, &crc)?;
            }
        }
        if color_valid && ((stage == Stage::Ihdr && !paletted) || (stage == Stage::Plte && paletted)) {
            return Some((width, height));
        }
    }
}

/// `image/jpeg.DecodeConfig`: markers up to the frame header (SOF0-2) of a JFIF image, or
/// up to the first scan otherwise, each segment checked as the decoder checks it in config
/// mode.
fn jpeg(s: &mut B64Stream<'_>) -> Option<(i64, i64)> {
    s.read(2)?;
    let mut jfif = false;
    let mut n_comp = 0usize;
    let (mut width, mut height) = (0i64, 0i64);
    loop {
        let t = s.read(2)?;
        let (mut t0, mut t1) = (t[0], t[1]);
        // Extraneous bytes before a marker are skipped.
        while t0 != 0xff {
            t0 = t1;
            t1 = s.read_byte()?;
        }
        let mut marker = t1;
        if marker == 0 {
            continue;
        }
        while marker == 0xff {
            marker = s.read_byte()?;
        }
        if marker == 0xd9 {
            // End of image before a scan: "missing SOS marker".
            return None;
        }
        if (0xd0..=0xd7).contains(&marker) {
            continue;
        }
        let l = s.read(2)?;
        let n = (usize::from(l[0]) << 8 | usize::from(l[1])).checked_sub(2)?;
        match marker {
            0xc0..=0xc2 => {
                if n_comp != 0 {
                    return None;
                }
                n_comp = match n {
                    9 => 1,
                    15 => 3,
                    18 => 4,
                    _ => return None,
                };
                let d = s.read(n)?;
                if d[0] != 8 || usize::from(d[5]) != n_comp {
                    return None;
                }
                height = i64::from(d[1]) << 8 | i64::from(d[2]);
                width = i64::from(d[3]) << 8 | i64::from(d[4]);
                if !sof_components_ok(d, n_comp) {
                    return None;
                }
                if jfif {
                    return Some((width, height));
                }
            }
            // DHT, DQT, DRI: skipped in config mode.
            0xc4 | 0xdb | 0xdd => s.skip(n)?,
            // Start of scan: the config is whatever the frame header said.
            0xda => return (n_comp != 0).then_some((width, height)),
            0xe0 => {
                if n < 5 {
                    s.skip(n)?;
                } else {
                    jfif = s.read(5)? == b"JFIF\0";
                    s.skip(n - 5)?;
                }
            }
            0xee => {
                if n < 12 {
                    s.skip(n)?;
                } else {
                    s.read(12)?;
                    s.skip(n - 12)?;
                }
            }
            0xe1..=0xef | 0xfe => s.skip(n)?,
            _ => return None,
        }
    }
}

// The per-component checks of Go's processSOF.
fn sof_components_ok(d: &[u8], n_comp: usize) -> bool {
    let mut hv_seen = [(0u8, 0u8); 4];
    for i in 0..n_comp {
        let c = d[6 + 3 * i];
        if (0..i).any(|j| d[6 + 3 * j] == c) {
            return false;
        }
        if d[8 + 3 * i] > 3 {
            return false;
        }
        let hv = d[7 + 3 * i];
        let (mut h, mut v) = (hv >> 4, hv & 0x0f);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || h == 3 || v == 3 {
            return false;
        }
        match (n_comp, i) {
            (1, _) => (h, v) = (1, 1),
            (3, 0) if v == 4 => return false,
            (3, 1) if hv_seen[0].0 % h != 0 || hv_seen[0].1 % v != 0 => return false,
            (3, 2) if hv_seen[1] != (h, v) => return false,
            (4, 0) if hv != 0x11 && hv != 0x22 => return false,
            (4, 1 | 2) if hv != 0x11 => return false,
            (4, 3) if hv_seen[0] != (h, v) => return false,
            _ => {}
        }
        hv_seen[i] = (h, v);
    }
    true
}

// Standard base64 encoding, for building fixtures.
#[cfg(test)]
pub(crate) fn b64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                s.push(A[((v >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(data: &[u8]) -> Option<(i64, i64)> {
        let b = b64_encode(data);
        decode_config(&mut B64Stream::new(&b))
    }

    fn png_chunk(ty: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = Crc32::new();
        c.update(ty);
        c.update(data);
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(ty);
        out.extend_from_slice(data);
        out.extend_from_slice(&c.sum().to_be_bytes());
        out
    }

    fn png_file(w: u32, h: u32, depth: u8, color: u8, extra: &[Vec<u8>]) -> Vec<u8> {
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
        let mut out = PNG_MAGIC.to_vec();
        out.extend(png_chunk(b"IHDR", &ihdr));
        for c in extra {
            out.extend_from_slice(c);
        }
        out
    }

    #[test]
    fn crc32_known_value() {
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.sum(), 0xCBF4_3926);
    }

    #[test]
    fn base64_stream_is_gos() {
        let read_all = |s: &str| {
            let mut st = B64Stream::new(s);
            st.fill(usize::MAX);
            st.out.clone()
        };
        assert_eq!(read_all("aGVsbG8="), b"hello");
        assert_eq!(read_all("aGVs\r\nbG8h"), b"hello!");
        // A partial quantum yields nothing; a bad character ends the stream after the
        // quanta before it; padding ends it.
        assert_eq!(read_all("aGVsbG"), b"hel");
        assert_eq!(read_all("aGVs*G8h"), b"hel");
        assert_eq!(read_all("aGVsbA==aGVs"), b"hell");
        assert_eq!(read_all("aGVsbA="), b"hel");
        assert_eq!(read_all("aGVsb==="), b"hel");
        assert_eq!(read_all("aGV-bG8h"), b"");
    }

    #[test]
    fn png_dimensions() {
        assert_eq!(dims(&png_file(64, 32, 8, 6, &[])), Some((64, 32)));
        // Only the header matters for a truecolor image; what follows may be cut off.
        let mut cut = png_file(1920, 1080, 8, 2, &[]);
        cut.extend_from_slice(b"\0\0");
        assert_eq!(dims(&cut), Some((1920, 1080)));
        // A bad checksum, a zero dimension, an invalid depth/color pair: refused.
        let mut bad = png_file(64, 32, 8, 6, &[]);
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(dims(&bad), None);
        assert_eq!(dims(&png_file(0, 32, 8, 6, &[])), None);
        assert_eq!(dims(&png_file(64, 32, 8, 1, &[])), None);
        // Truncated inside IHDR.
        assert_eq!(dims(&png_file(64, 32, 8, 6, &[])[..20]), None);
        // Ancillary chunks before IHDR are skipped (checksummed).
        let mut early = PNG_MAGIC.to_vec();
        early.extend(png_chunk(b"tEXt", b"k\0v"));
        early.extend_from_slice(&png_file(7, 9, 8, 0, &[])[8..]);
        assert_eq!(dims(&early), Some((7, 9)));
    }

    #[test]
    fn paletted_png_needs_its_palette() {
        let plte = png_chunk(b"PLTE", &[0, 0, 0, 255, 255, 255]);
        assert_eq!(dims(&png_file(10, 20, 8, 3, std::slice::from_ref(&plte))), Some((10, 20)));
        // Between IHDR and PLTE other chunks are skipped.
        let gama = png_chunk(b"gAMA", &[0, 0, 0xb1, 0x8f]);
        assert_eq!(dims(&png_file(10, 20, 8, 3, &[gama, plte.clone()])), Some((10, 20)));
        // No palette before the data, or the header alone: refused.
        let idat = png_chunk(b"IDAT", &[0]);
        assert_eq!(dims(&png_file(10, 20, 8, 3, &[idat])), None);
        assert_eq!(dims(&png_file(10, 20, 8, 3, &[])), None);
        // More entries than the bit depth allows.
        assert_eq!(dims(&png_file(10, 20, 1, 3, &[png_chunk(b"PLTE", &[0; 9])])), None);
    }

    #[test]
    fn gif_dimensions() {
        let mut g = b"GIF89a".to_vec();
        g.extend_from_slice(&[0x40, 0x01, 0xf0, 0x00, 0x00, 0, 0]);
        assert_eq!(dims(&g), Some((320, 240)));
        // A global color table announced but missing.
        let mut t = g.clone();
        t[10] = 0x81;
        assert_eq!(dims(&t), None);
        t.extend_from_slice(&[0; 12]);
        assert_eq!(dims(&t), Some((320, 240)));
        // "GIF8xa" sniffs as GIF but only 87a and 89a decode.
        g[4] = b'8';
        assert_eq!(dims(&g), None);
    }

    fn sof(w: u16, h: u16) -> Vec<u8> {
        let mut s = vec![0xff, 0xc0, 0, 17, 8];
        s.extend_from_slice(&h.to_be_bytes());
        s.extend_from_slice(&w.to_be_bytes());
        s.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        s
    }

    #[test]
    fn jpeg_dimensions() {
        let app0 = [0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0];
        let dqt = [0xff, 0xdb, 0, 4, 0, 0];
        // JFIF: the frame header is enough.
        let mut j = vec![0xff, 0xd8];
        j.extend_from_slice(&app0);
        j.extend_from_slice(&dqt);
        j.extend(sof(640, 480));
        assert_eq!(dims(&j), Some((640, 480)));
        // Not JFIF (Exif APP1): the decoder reads on to the scan.
        let mut e = vec![0xff, 0xd8, 0xff, 0xe1, 0, 4, b'E', b'x'];
        e.extend(sof(800, 600));
        assert_eq!(dims(&e), None);
        e.extend_from_slice(&[0xff, 0xc4, 0, 2, 0xff, 0xff, 0xda, 0, 2]);
        assert_eq!(dims(&e), Some((800, 600)));
        // End of image before a scan, an unknown marker, a 12-bit frame: refused.
        let mut eoi = vec![0xff, 0xd8];
        eoi.extend(sof(8, 8));
        eoi.extend_from_slice(&[0xff, 0xd9]);
        assert_eq!(dims(&eoi), None);
        assert_eq!(dims(&[0xff, 0xd8, 0xff, 0x01, 0, 2]), None);
        let mut p12 = vec![0xff, 0xd8];
        p12.extend_from_slice(&app0);
        let mut s = sof(8, 8);
        s[4] = 12;
        p12.extend(s);
        assert_eq!(dims(&p12), None);
        // Fill bytes and extraneous data before markers are tolerated.
        let mut fill = vec![0xff, 0xd8, 0x00, 0x12, 0xff, 0xff];
        fill.extend_from_slice(&app0[1..]);
        fill.extend(sof(3, 5));
        assert_eq!(dims(&fill), Some((3, 5)));
        // Chroma subsampled more than luma: unsupported.
        let mut sub = vec![0xff, 0xd8];
        sub.extend_from_slice(&app0);
        let mut s = sof(8, 8);
        s[11] = 0x11;
        s[14] = 0x22;
        sub.extend(s);
        assert_eq!(dims(&sub), None);
    }

    #[test]
    fn other_formats_are_unknown() {
        let webp = b"RIFF\x24\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0\x3f\0\0\x1f\0\0";
        assert_eq!(dims(webp), None);
        assert_eq!(dims(b"BM"), None);
        assert_eq!(dims(b""), None);
    }
}
