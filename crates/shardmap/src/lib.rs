//! The shard map of shardgate: which shard holds a row, decided from the
//! row's shard key. Pure: no I/O, no async.
//!
//! A [`ShardMap`] is built once from a [`ShardMapConfig`] (validated by
//! [`ShardMap::new`]), never changes, and is shared behind an `Arc`; a reload
//! or a rebalance cutover builds a new map with a higher version and swaps it
//! in whole.
//!
//! # Keys
//!
//! A key value becomes a [`ShardKey`] the same way whether it came as an SQL
//! literal, a text Bind parameter or a binary Bind parameter
//! ([`ShardKey::parse_text`], [`ShardKey::parse_binary`]). Its canonical
//! bytes ([`ShardKey::canonical_bytes`]) are what placement hashes:
//!
//! | key type | canonical bytes |
//! |---|---|
//! | `bigint` (also int2/int4/int8) | the value as an `i64`, 8 bytes big-endian two's complement |
//! | `text` | the UTF-8 bytes, no terminator or length prefix |
//! | `uuid` | the 16 bytes in network order |
//!
//! # Hash placement (exact algorithm)
//!
//! Placement depends only on byte strings and xxhash64, never on a Rust
//! `Hash` impl's choice of encoding. `XXH64(b)` below is xxhash64 with seed 0
//! of the byte string `b`.
//!
//! 1. **Ring points.** Shard `s` (its index in [`ShardMapConfig::weights`])
//!    gets the virtual nodes `v = 0, 1, ..., vnodes * weights[s] - 1`. The
//!    point of virtual node `(s, v)` is `XXH64("shard-{s}-vnode-{v}")`: ASCII,
//!    `s` and `v` in decimal without leading zeros, e.g. `shard-0-vnode-17`.
//! 2. **Key point.** The point of a key is `XXH64(canonical bytes)`.
//! 3. **Owner.** The key belongs to the virtual node with the smallest point
//!    `>=` the key's point; if there is none, to the virtual node with the
//!    smallest point overall (the ring wraps). The key's shard is that
//!    virtual node's shard. (Two virtual nodes with the same 64-bit point
//!    are astronomically unlikely and not otherwise handled.)
//!
//! The ring is a `hashring::HashRing` built with `batch_add`; both the
//! virtual nodes and the looked-up keys hash through one `Hasher::write` of
//! exactly the bytes above. Consequences:
//!
//! * A shard's points do not depend on the other shards, so adding shard `N`
//!   moves only keys onto shard `N` (about `1/(N+1)` of them), and raising a
//!   shard's weight only adds points, moving keys onto that shard only.
//! * Shard identity on the ring is its index: renumbering shards moves data.
//! * With 256 virtual nodes per shard, a shard's share of the keys varies
//!   around the ideal by a few percent (the share is a sum of 256 random
//!   arcs: about 5% standard deviation for 3 shards).
//!
//! `tests/placement_vectors.txt` pins key → shard for all three key types, so
//! a dependency upgrade that silently moves data fails the build.
//!
//! # Range and list placement
//!
//! A range rule maps bigint keys in `[start, end)` to a shard; a list rule
//! maps listed values to a shard. A key that no entry accepts is an error
//! ([`NoShard`]), never a broadcast. [`ShardMap::shards_for_range`] prunes the
//! shards a range predicate can touch.

#![warn(missing_docs)]

mod key;
mod map;
mod ring;
mod table;
mod transition;
mod validate;

pub use key::{KeyError, KeyType, ShardKey};
pub use map::{ArcOwner, NoShard, ShardMap, ShardMapConfig};
pub use table::{Function, ListEntry, RangeEntry, TableName, TableRule};
pub use transition::{Transition, TransitionError};
pub use validate::{MapError, MAX_RING_POINTS};
