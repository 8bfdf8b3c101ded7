//! The secret scan: counts needles in output files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, Default)]
pub struct ScanReport {
    pub files: usize,
    pub bytes: u64,
    pub hits: BTreeMap<String, usize>,
}

impl ScanReport {
    pub fn describe(&self) -> String {
        format!(
            "{} files, {:.1} MiB scanned, hits {:?}",
            self.files,
            self.bytes as f64 / 1048576.0,
            self.hits
        )
    }
}

/// Counts each needle in each file, reading in chunks (trace logs are big).
pub fn scan(files: &[PathBuf], needles: &[&str]) -> ScanReport {
    let mut report = ScanReport::default();
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    for path in files {
        let Ok(mut file) = File::open(path) else {
            continue;
        };
        report.files += 1;
        let mut carry: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            report.bytes += n as u64;
            let mut window = std::mem::take(&mut carry);
            let carried = window.len();
            window.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&window);
            for needle in needles {
                // Count only matches that end past the carried part (no double count).
                let count = text
                    .match_indices(needle)
                    .filter(|(i, _)| i + needle.len() > carried)
                    .count();
                *report.hits.entry((*needle).to_owned()).or_default() += count;
            }
            let keep = overlap.saturating_sub(1).min(window.len());
            carry = window[window.len() - keep..].to_vec();
        }
    }
    report
}
