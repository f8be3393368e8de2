//! Hash placement: balance, weights, movement when a shard is added, agreement
//! with the documented algorithm, and pinned test vectors.
//!
//! Regenerate the vectors (only when a placement change is intended, since
//! it moves data):
//! `cargo test -p shardgate-shardmap --test placement -- --ignored generate_placement_vectors`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use shardgate_shardmap::{KeyType, ShardKey, ShardMap, ShardMapConfig};
use twox_hash::XxHash64;

const KEYS: i64 = 1_000_000;
const VNODES: u32 = 256;
const VECTOR_SHARD_COUNTS: [usize; 2] = [3, 4];
const VECTORS_PER_TYPE: usize = 200;

fn hash_map(weights: &[u32], vnodes: u32) -> ShardMap {
    let cfg = ShardMapConfig {
        weights: weights.to_vec(),
        vnodes,
        default_shard: 0,
        tables: Vec::new(),
        reference_tables: Vec::new(),
        arcs: Vec::new(),
    };
    ShardMap::new(cfg, 1).expect("valid config")
}

fn count_keys(map: &ShardMap) -> Vec<u64> {
    let mut counts = vec![0u64; map.shard_count()];
    for k in 1..=KEYS {
        counts[map.hash_shard(&ShardKey::Int(k))] += 1;
    }
    counts
}

#[test]
fn three_equal_shards_are_balanced_within_ten_percent() {
    let map = hash_map(&[1, 1, 1], VNODES);
    let counts = count_keys(&map);
    let ideal = KEYS as f64 / 3.0;
    let deviations: Vec<f64> = counts
        .iter()
        .map(|&c| (c as f64 / ideal - 1.0) * 100.0)
        .collect();
    println!("3 shards x {VNODES} vnodes: {counts:?}, deviation from ideal (%): {deviations:.2?}");
    for (shard, dev) in deviations.iter().enumerate() {
        assert!(
            dev.abs() <= 10.0,
            "shard {shard} is {dev:.2}% off the ideal third: {counts:?}"
        );
    }
}

#[test]
fn weight_two_gets_about_double() {
    let map = hash_map(&[1, 2, 1], VNODES);
    let counts = count_keys(&map);
    let others = (counts[0] + counts[2]) as f64 / 2.0;
    let ratio = counts[1] as f64 / others;
    println!("weights [1, 2, 1]: {counts:?}, shard 1 / mean of others = {ratio:.3}");
    assert!((1.7..=2.3).contains(&ratio), "ratio {ratio:.3}: {counts:?}");
}

#[test]
fn adding_a_fourth_shard_moves_a_quarter_onto_it() {
    let before = hash_map(&[1, 1, 1], VNODES);
    let after = hash_map(&[1, 1, 1, 1], VNODES);
    let mut moved = 0u64;
    for k in 1..=KEYS {
        let key = ShardKey::Int(k);
        let (old, new) = (before.hash_shard(&key), after.hash_shard(&key));
        if old != new {
            assert_eq!(new, 3, "key {k} moved from shard {old} to {new}");
            moved += 1;
        }
    }
    let pct = moved as f64 * 100.0 / KEYS as f64;
    println!("adding shard 3: {moved} of {KEYS} keys moved ({pct:.2}%), all onto shard 3");
    assert!((20.0..=30.0).contains(&pct), "{pct:.2}% moved");
}

#[test]
fn raising_a_weight_moves_keys_onto_that_shard_only() {
    let before = hash_map(&[1, 1, 1], 64);
    let after = hash_map(&[1, 2, 1], 64);
    for k in 1..=100_000 {
        let key = ShardKey::Int(k);
        let (old, new) = (before.hash_shard(&key), after.hash_shard(&key));
        assert!(old == new || new == 1, "key {k}: {old} -> {new}");
    }
}

/// The documented algorithm, written independently of `hashring`.
struct ReferenceRing {
    points: Vec<(u64, usize)>,
}

impl ReferenceRing {
    fn new(weights: &[u32], vnodes: u32) -> Self {
        let mut points = Vec::new();
        for (shard, &w) in weights.iter().enumerate() {
            for v in 0..vnodes * w {
                let label = format!("shard-{shard}-vnode-{v}");
                points.push((XxHash64::oneshot(0, label.as_bytes()), shard));
            }
        }
        points.sort_by_key(|&(point, _)| point);
        ReferenceRing { points }
    }

    fn shard(&self, canonical: &[u8]) -> usize {
        let h = XxHash64::oneshot(0, canonical);
        let i = self.points.partition_point(|&(point, _)| point < h);
        self.points[i % self.points.len()].1
    }
}

#[test]
fn placement_follows_the_documented_algorithm() {
    let weights = [1, 3, 2];
    let map = hash_map(&weights, 32);
    let reference = ReferenceRing::new(&weights, 32);
    let mut keys: Vec<ShardKey> = (-5_000..5_000).map(ShardKey::Int).collect();
    keys.extend([i64::MIN, i64::MAX].map(ShardKey::Int));
    keys.extend((0..5_000).map(|i| ShardKey::Text(format!("user-{i}"))));
    keys.push(ShardKey::Text(String::new()));
    keys.extend((0..5_000u32).map(|i| {
        let mut u = [0u8; 16];
        u[..4].copy_from_slice(&i.to_be_bytes());
        u[15] = 0xab;
        ShardKey::Uuid(u)
    }));
    for key in &keys {
        assert_eq!(
            map.hash_shard(key),
            reference.shard(&key.canonical_bytes()),
            "{key:?}"
        );
    }
}

#[test]
fn a_value_lands_on_one_shard_however_it_arrives() {
    let map = hash_map(&[1, 1, 1], VNODES);
    for v in [
        -1i64,
        0,
        1,
        42,
        32_767,
        -32_768,
        2_147_483_647,
        -2_147_483_648,
    ] {
        let shard = map.hash_shard(&ShardKey::Int(v));
        let literal = ShardKey::parse_text(KeyType::BigInt, &format!(" {v} ")).unwrap();
        assert_eq!(map.hash_shard(&literal), shard);
        let int8 = ShardKey::parse_binary(KeyType::BigInt, &v.to_be_bytes()).unwrap();
        assert_eq!(map.hash_shard(&int8), shard);
        if let Ok(small) = i32::try_from(v) {
            let int4 = ShardKey::parse_binary(KeyType::BigInt, &small.to_be_bytes()).unwrap();
            assert_eq!(map.hash_shard(&int4), shard);
        }
        if let Ok(small) = i16::try_from(v) {
            let int2 = ShardKey::parse_binary(KeyType::BigInt, &small.to_be_bytes()).unwrap();
            assert_eq!(map.hash_shard(&int2), shard);
        }
    }
    let text = ShardKey::parse_text(KeyType::Uuid, "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}").unwrap();
    let binary = ShardKey::parse_binary(
        KeyType::Uuid,
        &[
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ],
    )
    .unwrap();
    assert_eq!(map.hash_shard(&text), map.hash_shard(&binary));
}

// ---- pinned test vectors ------------------------------------------------

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/placement_vectors.txt")
}

/// Escapes a text value for one tab-separated field.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape`].
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            other => panic!("bad escape \\{other:?} in {s:?}"),
        }
    }
    out
}

/// SplitMix64: a deterministic generator for the vector keys.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn vector_bigints(rng: &mut SplitMix) -> Vec<ShardKey> {
    let mut v: Vec<i64> = vec![
        0,
        1,
        -1,
        2,
        42,
        -42,
        1_000_000,
        i64::MIN,
        i64::MIN + 1,
        i64::MAX,
        i64::MAX - 1,
        i64::from(i32::MIN),
        i64::from(i32::MAX),
        i64::from(i16::MIN),
        i64::from(i16::MAX),
    ];
    v.extend((1..=20).map(|i| i * 1000));
    v.extend((0..20).map(|i| -(1i64 << (i * 3))));
    while v.len() < VECTORS_PER_TYPE + 20 {
        let r = rng.next() as i64;
        // Mix full-range values with small ones (both signs).
        v.push(if v.len().is_multiple_of(2) {
            r
        } else {
            r % 100_000
        });
    }
    v.into_iter().map(ShardKey::Int).collect()
}

fn vector_texts(rng: &mut SplitMix) -> Vec<ShardKey> {
    const PIECES: &[&str] = &[
        "a", "b", "z", "A", "Q", "0", "7", " ", "-", "_", "é", "ß", "ü", "日", "本", "語", "Ω",
        "ж", "😀", "🚀", "ا", "'", "\"",
    ];
    let mut v: Vec<String> = [
        "",
        " ",
        "a",
        "A",
        "US",
        "CA",
        "DE",
        "FR",
        "JP",
        "user-1",
        "café",
        "Straße",
        "日本語",
        "😀",
        "naïve résumé",
        "tab\there",
        "line\nbreak",
        "back\\slash",
        "O'Brien",
        "0",
        "42",
        "-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend((0..30).map(|i| format!("user-{i}")));
    while v.len() < VECTORS_PER_TYPE + 20 {
        let len = rng.next() % 12;
        let s: String = (0..len)
            .map(|_| PIECES[(rng.next() % PIECES.len() as u64) as usize])
            .collect();
        v.push(s);
    }
    v.into_iter().map(ShardKey::Text).collect()
}

fn vector_uuids(rng: &mut SplitMix) -> Vec<ShardKey> {
    let mut v: Vec<[u8; 16]> = vec![[0; 16], [0xff; 16], {
        let mut one = [0u8; 16];
        one[15] = 1;
        one
    }];
    while v.len() < VECTORS_PER_TYPE + 20 {
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&rng.next().to_be_bytes());
        u[8..].copy_from_slice(&rng.next().to_be_bytes());
        // Version 4, variant 1, like gen_random_uuid().
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        v.push(u);
    }
    v.into_iter().map(ShardKey::Uuid).collect()
}

fn vector_keys() -> Vec<ShardKey> {
    let mut rng = SplitMix(0x5ad_6a7e);
    let mut keys = vector_bigints(&mut rng);
    keys.extend(vector_texts(&mut rng));
    keys.extend(vector_uuids(&mut rng));
    let mut seen = std::collections::HashSet::new();
    keys.retain(|key| seen.insert(key.clone()));
    keys
}

fn format_value(key: &ShardKey) -> String {
    match key {
        ShardKey::Text(s) => escape(s),
        other => other.to_string(),
    }
}

#[test]
#[ignore = "writes tests/placement_vectors.txt; run only to change placement on purpose"]
fn generate_placement_vectors() {
    let mut out = String::new();
    out.push_str(
        "# Pinned hash placement: type<TAB>value<TAB>shards<TAB>expected shard.\n\
         # Equal weights, vnodes 256. Text values escape \\\\, \\t, \\n and \\r.\n\
         # A failure here means placement changed and stored data would move.\n\
         # Regenerate only on purpose: cargo test -p shardgate-shardmap --test placement \
         -- --ignored generate_placement_vectors\n",
    );
    let keys = vector_keys();
    for shards in VECTOR_SHARD_COUNTS {
        let map = hash_map(&vec![1; shards], VNODES);
        for key in &keys {
            let line = format!(
                "{}\t{}\t{}\t{}",
                key.key_type(),
                format_value(key),
                shards,
                map.hash_shard(key)
            );
            writeln!(out, "{line}").unwrap();
        }
    }
    std::fs::write(vectors_path(), out).unwrap();
}

#[test]
fn placement_vectors_are_stable() {
    let text = std::fs::read_to_string(vectors_path()).expect("tests/placement_vectors.txt");
    let maps: BTreeMap<usize, ShardMap> = VECTOR_SHARD_COUNTS
        .iter()
        .map(|&n| (n, hash_map(&vec![1; n], VNODES)))
        .collect();
    let mut per_kind: BTreeMap<(String, usize), usize> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 4, "line {}: {line:?}", n + 1);
        let key_type: KeyType = fields[0].parse().unwrap();
        let key = match key_type {
            KeyType::Text => ShardKey::Text(unescape(fields[1])),
            t => ShardKey::parse_text(t, fields[1]).unwrap(),
        };
        let shards: usize = fields[2].parse().unwrap();
        let expected: usize = fields[3].parse().unwrap();
        let got = maps[&shards].hash_shard(&key);
        assert_eq!(
            got,
            expected,
            "line {}: {key_type} {key:?} over {shards} shards moved from {expected} to {got}",
            n + 1
        );
        *per_kind.entry((fields[0].to_owned(), shards)).or_default() += 1;
    }
    assert_eq!(
        per_kind.len(),
        3 * VECTOR_SHARD_COUNTS.len(),
        "{per_kind:?}"
    );
    for (kind, count) in &per_kind {
        assert!(*count >= VECTORS_PER_TYPE, "{kind:?}: only {count} vectors");
    }
}

#[test]
fn vector_file_covers_the_edge_cases() {
    let text = std::fs::read_to_string(vectors_path()).unwrap();
    for needle in [
        "bigint\t-9223372036854775808\t3\t",
        "bigint\t9223372036854775807\t4\t",
        "bigint\t-1\t3\t",
        "text\t\t3\t",
        "text\t日本語\t4\t",
        "text\ttab\\there\t3\t",
        "uuid\t00000000-0000-0000-0000-000000000000\t3\t",
        "uuid\tffffffff-ffff-ffff-ffff-ffffffffffff\t4\t",
    ] {
        assert!(text.contains(needle), "missing {needle:?}");
    }
}

#[test]
fn escaping_round_trips() {
    for s in ["", "a\tb", "x\\ty", "\n\r\\", "日本"] {
        assert_eq!(unescape(&escape(s)), s);
        assert!(!escape(s).contains('\t'));
    }
}

#[test]
#[ignore = "timing report; run with --release --nocapture"]
fn lookup_cost() {
    for (shards, vnodes) in [(3usize, 256u32), (16, 256)] {
        let map = hash_map(&vec![1; shards], vnodes);
        let keys: Vec<ShardKey> = (0..1_000_000).map(ShardKey::Int).collect();
        let start = Instant::now();
        let mut sum = 0usize;
        for key in &keys {
            sum += map.hash_shard(key);
        }
        let per = start.elapsed().as_nanos() as f64 / keys.len() as f64;
        let texts: Vec<ShardKey> = (0..1_000_000)
            .map(|i| ShardKey::Text(format!("customer-{i}")))
            .collect();
        let start = Instant::now();
        for key in &texts {
            sum += map.hash_shard(key);
        }
        let per_text = start.elapsed().as_nanos() as f64 / texts.len() as f64;
        let start = Instant::now();
        let built = hash_map(&vec![1; shards], vnodes);
        let build = start.elapsed();
        println!(
            "{shards} shards x {vnodes} vnodes: {per:.1} ns/lookup (bigint), \
             {per_text:.1} ns/lookup (text ~15 bytes), build {build:?} \
             (checksum {sum}, {} shards)",
            built.shard_count()
        );
    }
}
