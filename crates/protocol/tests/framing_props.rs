//! Property: however a byte stream is cut into reads, framing yields
//! exactly the messages that were written, in order, and never a message
//! before all of its bytes arrived.

use bytes::BytesMut;
use proptest::prelude::*;
use shardgate_protocol::batch::{batch_end, BatchEnd};
use shardgate_protocol::startup::{encode_startup, StartupPacket};
use shardgate_protocol::{consume_front, Header};

const MAX: usize = 1 << 16;

/// Tagged messages: (tag, body).
fn messages() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    let tag = prop::sample::select(b"QPBDECSHXdcfTDZEZCK1".to_vec());
    // Bodies up to a few KiB, so that a message crosses the 4 KiB rewind
    // limit of `consume_front` and read boundaries in every way.
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..16),
        prop::collection::vec(any::<u8>(), 0..6000),
    ];
    prop::collection::vec((tag, body), 0..12)
}

/// Cut points: a read size for each read (1..=n bytes).
fn reads() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..9000, 1..40)
}

fn encode(msgs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (t, body) in msgs {
        out.push(*t);
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// The read loop of a session: append what arrived, take every complete
    /// message with `Header::complete`, drop it with `consume_front`.
    #[test]
    fn framing_is_independent_of_read_boundaries(msgs in messages(), sizes in reads()) {
        let stream = encode(&msgs);
        let mut buf = BytesMut::new();
        let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut fed = 0;
        let mut sizes = sizes.into_iter().cycle();
        while fed < stream.len() {
            let n = sizes.next().expect("cycle").min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            while let Some(h) = Header::complete(&buf, MAX).expect("valid lengths") {
                got.push((h.tag, buf[5..h.total].to_vec()));
                consume_front(&mut buf, h.total);
            }
            // What is left is a strict prefix of the next message.
            let next = got.len();
            if next < msgs.len() {
                prop_assert!(buf.len() < msgs[next].1.len() + 5);
            } else {
                prop_assert!(buf.is_empty());
            }
        }
        prop_assert_eq!(got, msgs);
    }

    /// An extended-protocol batch ends at its first message that does not
    /// continue it, whether the scan resumes from earlier partial reads or not.
    #[test]
    fn batch_end_is_independent_of_read_boundaries(msgs in messages(), sizes in reads()) {
        let stream = encode(&msgs);
        let whole = batch_end(&stream, 0, MAX).expect("valid lengths");
        let mut scanned = 0;
        let mut have = 0;
        let mut sizes = sizes.into_iter().cycle();
        let result = loop {
            have = (have + sizes.next().expect("cycle")).min(stream.len());
            match batch_end(&stream[..have], scanned, MAX).expect("valid lengths") {
                BatchEnd::Complete(n) => break BatchEnd::Complete(n),
                BatchEnd::Incomplete(n) if have == stream.len() => break BatchEnd::Incomplete(n),
                BatchEnd::Incomplete(n) => scanned = n,
            }
        };
        prop_assert_eq!(result, whole);
    }

    /// The startup packet is decoded only once it is whole, and then with
    /// exactly its parameters, however it arrives.
    #[test]
    fn startup_packet_is_independent_of_read_boundaries(
        params in prop::collection::vec(("[a-z_.]{1,12}", "[ -~]{0,40}"), 0..8),
        sizes in reads(),
    ) {
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut stream = BytesMut::new();
        encode_startup(&pairs, &mut stream);
        let mut have = 0;
        let mut sizes = sizes.into_iter().cycle();
        loop {
            have = (have + sizes.next().expect("cycle")).min(stream.len());
            match StartupPacket::decode(&stream[..have]).expect("valid packet") {
                None => prop_assert!(have < stream.len()),
                Some((packet, used)) => {
                    prop_assert_eq!(used, stream.len());
                    let StartupPacket::Startup { params: got, .. } = packet else {
                        panic!("not a startup message: {packet:?}");
                    };
                    prop_assert_eq!(got, params);
                    break;
                }
            }
        }
    }
}
