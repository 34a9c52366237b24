//! The per-core data-cache sizes the GEMM's blocking is cut to, read once from the OS.
//!
//! Our machines differ: an Intel Emerald Rapids core has 48 KiB of L1d and 2 MiB of L2, an AMD
//! Zen 3 core 32 KiB and 512 KiB. Blocks sized for the first overflow the second's caches.

use std::path::Path;
use std::sync::OnceLock;

/// Per-core data-cache sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    /// Level-1 data cache.
    pub l1d: usize,
    /// Level-2 cache (unified).
    pub l2: usize,
}

impl CacheSizes {
    /// Used where the OS does not say, or says something implausible: the smaller of the x86
    /// cores we have run on (Zen 3). Smaller caches exist (256 KiB of L2 on Skylake clients);
    /// there blocks overflow to the next level, which costs speed, not correctness.
    pub const FALLBACK: CacheSizes = CacheSizes {
        l1d: 32 * 1024,
        l2: 512 * 1024,
    };

    /// This machine's sizes (CPU 0's, from sysfs), or [`CacheSizes::FALLBACK`]; read once.
    pub fn detected() -> CacheSizes {
        static SIZES: OnceLock<CacheSizes> = OnceLock::new();
        *SIZES.get_or_init(|| {
            Self::from_sysfs(Path::new("/sys/devices/system/cpu/cpu0/cache"))
                .unwrap_or(Self::FALLBACK)
        })
    }

    /// Reads `index*/{level,type,size}` under `dir` (Linux's layout); `None` unless both an L1
    /// data (or unified) cache and an L2 are listed with plausible sizes.
    pub fn from_sysfs(dir: &Path) -> Option<CacheSizes> {
        let (mut l1d, mut l2) = (None, None);
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            if kind.trim() == "Instruction" {
                continue;
            }
            match (level.trim(), parse_size(&size)) {
                ("1", Some(bytes)) => l1d = Some(bytes),
                ("2", Some(bytes)) => l2 = Some(bytes),
                _ => {}
            }
        }
        let sizes = CacheSizes { l1d: l1d?, l2: l2? };
        // A VM may report anything; blocks cut to nonsense would only be slow, but say no.
        let plausible = (4 * 1024..=4 * 1024 * 1024).contains(&sizes.l1d)
            && (sizes.l1d..=1024 * 1024 * 1024).contains(&sizes.l2);
        plausible.then_some(sizes)
    }
}

/// Parses sysfs's cache size notation: `32K`, `2048K`, `1M` or plain bytes. Zero is rejected.
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let scale = match unit {
        "" => 1,
        "K" => 1024,
        "M" => 1024 * 1024,
        _ => return None,
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_sysfs_notation() {
        assert_eq!(parse_size("32K\n"), Some(32 * 1024));
        assert_eq!(parse_size("2M"), Some(2 * 1024 * 1024));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0K"), None);
        assert_eq!(parse_size("12G"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("K"), None);
    }

    fn write_cache(dir: &Path, index: usize, level: &str, kind: &str, size: &str) {
        let d = dir.join(format!("index{index}"));
        std::fs::create_dir_all(&d).unwrap();
        for (name, value) in [("level", level), ("type", kind), ("size", size)] {
            std::fs::write(d.join(name), format!("{value}\n")).unwrap();
        }
    }

    #[test]
    fn sysfs_layout_gives_l1_data_and_l2() {
        let dir = std::env::temp_dir().join(format!("cache-sizes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_cache(&dir, 0, "1", "Data", "48K");
        write_cache(&dir, 1, "1", "Instruction", "32K");
        // An L1 alone is not enough.
        assert_eq!(CacheSizes::from_sysfs(&dir), None);
        write_cache(&dir, 2, "2", "Unified", "2048K");
        write_cache(&dir, 3, "3", "Unified", "260M");
        assert_eq!(
            CacheSizes::from_sysfs(&dir),
            Some(CacheSizes {
                l1d: 48 * 1024,
                l2: 2 * 1024 * 1024
            })
        );
        // An L2 smaller than the L1 is not believed.
        write_cache(&dir, 2, "2", "Unified", "16K");
        assert_eq!(CacheSizes::from_sysfs(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(CacheSizes::from_sysfs(&dir), None);
    }

    #[test]
    fn this_machine_reports_plausible_sizes() {
        let c = CacheSizes::detected();
        assert!((8 * 1024..=1024 * 1024).contains(&c.l1d), "{c:?}");
        assert!(c.l2 > c.l1d, "{c:?}");
    }
}
