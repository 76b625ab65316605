//! The STAN client wire messages (package `pb` of nats-streaming), written
//! out from the field tables of the protocol reference. Field numbers have
//! gaps on purpose; they are the wire format.

use bytes::Bytes;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PubMsg {
    #[prost(string, tag = "1")]
    pub client_id: String,
    #[prost(string, tag = "2")]
    pub guid: String,
    #[prost(string, tag = "3")]
    pub subject: String,
    #[prost(string, tag = "4")]
    pub reply: String,
    #[prost(bytes = "bytes", tag = "5")]
    pub data: Bytes,
    #[prost(bytes = "bytes", tag = "6")]
    pub conn_id: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PubAck {
    #[prost(string, tag = "1")]
    pub guid: String,
    #[prost(string, tag = "2")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MsgProto {
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    #[prost(string, tag = "2")]
    pub subject: String,
    #[prost(string, tag = "3")]
    pub reply: String,
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
    /// Nanoseconds since the Unix epoch.
    #[prost(int64, tag = "5")]
    pub timestamp: i64,
    #[prost(bool, tag = "6")]
    pub redelivered: bool,
    #[prost(uint32, tag = "7")]
    pub redelivery_count: u32,
    #[prost(uint32, tag = "10")]
    pub crc32: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(string, tag = "1")]
    pub subject: String,
    #[prost(uint64, tag = "2")]
    pub sequence: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectRequest {
    #[prost(string, tag = "1")]
    pub client_id: String,
    #[prost(string, tag = "2")]
    pub heartbeat_inbox: String,
    #[prost(int32, tag = "3")]
    pub protocol: i32,
    #[prost(bytes = "bytes", tag = "4")]
    pub conn_id: Bytes,
    /// Seconds.
    #[prost(int32, tag = "5")]
    pub ping_interval: i32,
    #[prost(int32, tag = "6")]
    pub ping_max_out: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectResponse {
    #[prost(string, tag = "1")]
    pub pub_prefix: String,
    #[prost(string, tag = "2")]
    pub sub_requests: String,
    #[prost(string, tag = "3")]
    pub unsub_requests: String,
    #[prost(string, tag = "4")]
    pub close_requests: String,
    #[prost(string, tag = "5")]
    pub error: String,
    #[prost(string, tag = "6")]
    pub sub_close_requests: String,
    #[prost(string, tag = "7")]
    pub ping_requests: String,
    /// Seconds; negative means milliseconds (the test convention of stan.go,
    /// which servers echo unchanged).
    #[prost(int32, tag = "8")]
    pub ping_interval: i32,
    #[prost(int32, tag = "9")]
    pub ping_max_out: i32,
    #[prost(int32, tag = "10")]
    pub protocol: i32,
    #[prost(string, tag = "100")]
    pub public_key: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    #[prost(bytes = "bytes", tag = "1")]
    pub conn_id: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PingResponse {
    #[prost(string, tag = "1")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscriptionRequest {
    #[prost(string, tag = "1")]
    pub client_id: String,
    #[prost(string, tag = "2")]
    pub subject: String,
    #[prost(string, tag = "3")]
    pub q_group: String,
    #[prost(string, tag = "4")]
    pub inbox: String,
    #[prost(int32, tag = "5")]
    pub max_in_flight: i32,
    #[prost(int32, tag = "6")]
    pub ack_wait_in_secs: i32,
    #[prost(string, tag = "7")]
    pub durable_name: String,
    /// The StartPosition enum; the same varint on the wire.
    #[prost(int32, tag = "10")]
    pub start_position: i32,
    #[prost(uint64, tag = "11")]
    pub start_sequence: u64,
    /// Nanoseconds before the server's now.
    #[prost(int64, tag = "12")]
    pub start_time_delta: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscriptionResponse {
    #[prost(string, tag = "2")]
    pub ack_inbox: String,
    #[prost(string, tag = "3")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UnsubscribeRequest {
    #[prost(string, tag = "1")]
    pub client_id: String,
    #[prost(string, tag = "2")]
    pub subject: String,
    #[prost(string, tag = "3")]
    pub inbox: String,
    #[prost(string, tag = "4")]
    pub durable_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseRequest {
    #[prost(string, tag = "1")]
    pub client_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseResponse {
    #[prost(string, tag = "1")]
    pub error: String,
}

#[cfg(test)]
mod tests {
    //! Vectors from the protocol reference (§3.1), produced there with the
    //! generated code of node-nats-streaming 0.3.2.
    use super::*;
    use prost::Message;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap_or_default())
            .collect()
    }

    #[test]
    fn encodes_like_the_reference_client() {
        let connect = ConnectRequest {
            client_id: "me".into(),
            heartbeat_inbox: "_INBOX.hb".into(),
            protocol: 1,
            conn_id: Bytes::from_static(b"c1"),
            ping_interval: 5,
            ping_max_out: 88,
        };
        assert_eq!(
            connect.encode_to_vec(),
            hex("0a 02 6d 65 12 09 5f 49 4e 42 4f 58 2e 68 62 18 01 22 02 63 31 28 05 30 58")
        );
        let publish = PubMsg {
            client_id: "me".into(),
            guid: "g1".into(),
            subject: "foo".into(),
            data: Bytes::from_static(b"hi"),
            conn_id: Bytes::from_static(b"c1"),
            ..Default::default()
        };
        assert_eq!(
            publish.encode_to_vec(),
            hex("0a 02 6d 65 12 02 67 31 1a 03 66 6f 6f 2a 02 68 69 32 02 63 31")
        );
        let subscribe = SubscriptionRequest {
            client_id: "me".into(),
            subject: "foo".into(),
            inbox: "_INBOX.s".into(),
            max_in_flight: 1024,
            ack_wait_in_secs: 30,
            start_position: 3,
            start_sequence: 5,
            ..Default::default()
        };
        assert_eq!(
            subscribe.encode_to_vec(),
            hex("0a 02 6d 65 12 03 66 6f 6f 22 08 5f 49 4e 42 4f 58 2e 73 28 80 08 30 1e 50 03 58 05")
        );
        let by_time = SubscriptionRequest {
            start_position: 2,
            start_time_delta: 1_000_000_000,
            ..Default::default()
        };
        assert_eq!(by_time.encode_to_vec(), hex("50 02 60 80 94 eb dc 03"));
        let ack = Ack {
            subject: "foo".into(),
            sequence: 1,
        };
        assert_eq!(ack.encode_to_vec(), hex("0a 03 66 6f 6f 10 01"));
        let unsubscribe = UnsubscribeRequest {
            client_id: "me".into(),
            subject: "foo".into(),
            inbox: "_INBOX.a".into(),
            ..Default::default()
        };
        assert_eq!(
            unsubscribe.encode_to_vec(),
            hex("0a 02 6d 65 12 03 66 6f 6f 1a 08 5f 49 4e 42 4f 58 2e 61")
        );
        let ping = Ping {
            conn_id: Bytes::from_static(b"c1"),
        };
        assert_eq!(ping.encode_to_vec(), hex("0a 02 63 31"));
    }

    #[test]
    fn decodes_what_the_server_sends() {
        let msg = MsgProto::decode(
            &hex("08 01 12 03 66 6f 6f 22 02 68 69 28 80 80 a8 b1 e3 9f e7 cb 17 30 01 38 02")[..],
        );
        assert_eq!(
            msg.ok(),
            Some(MsgProto {
                sequence: 1,
                subject: "foo".into(),
                data: Bytes::from_static(b"hi"),
                timestamp: 1_700_000_000_000_000_000,
                redelivered: true,
                redelivery_count: 2,
                ..Default::default()
            })
        );
        let ack = PubAck::decode(&hex("0a 02 67 31 12 01 65")[..]);
        assert_eq!(
            ack.ok(),
            Some(PubAck {
                guid: "g1".into(),
                error: "e".into()
            })
        );
        let response = SubscriptionResponse::decode(&hex("12 08 5f 49 4e 42 4f 58 2e 61")[..]);
        assert_eq!(response.ok().map(|r| r.ack_inbox), Some("_INBOX.a".into()));
        let keyed = ConnectResponse::decode(&hex("a2 06 01 6b")[..]);
        assert_eq!(keyed.ok().map(|r| r.public_key), Some("k".into()));
        // Empty payloads are successes, not failures.
        assert_eq!(
            CloseResponse::decode(&[][..]).ok(),
            Some(CloseResponse::default())
        );
    }

    /// xorshift64*: enough randomness for a fuzz loop without a dependency.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Every frame the server can send us goes through one of these.
    fn decode_all(frame: &[u8]) {
        let _ = MsgProto::decode(frame);
        let _ = PubAck::decode(frame);
        let _ = ConnectResponse::decode(frame);
        let _ = SubscriptionResponse::decode(frame);
        let _ = PingResponse::decode(frame);
        let _ = CloseResponse::decode(frame);
    }

    #[test]
    fn decoders_survive_random_and_mutated_frames() {
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        let valid = MsgProto {
            sequence: 42,
            subject: "orders.created".into(),
            data: Bytes::from_static(b"{\"id\":1}"),
            timestamp: 1_700_000_000_000_000_000,
            redelivered: true,
            redelivery_count: 3,
            ..Default::default()
        }
        .encode_to_vec();
        let mut failures = 0;
        for round in 0..5000 {
            let frame = if round % 2 == 0 {
                let len = noise.below(64);
                noise.bytes(len)
            } else {
                let mut frame = valid.clone();
                for _ in 0..=noise.below(4) {
                    match noise.below(3) {
                        0 if !frame.is_empty() => {
                            let at = noise.below(frame.len());
                            frame[at] = noise.next() as u8;
                        }
                        1 => frame.truncate(noise.below(frame.len())),
                        _ => {
                            let at = noise.below(frame.len());
                            let extra = noise.below(8);
                            let bytes = noise.bytes(extra);
                            frame.splice(at..at, bytes);
                        }
                    }
                }
                frame
            };
            decode_all(&frame);
            if MsgProto::decode(&frame[..]).is_err() {
                failures += 1;
            }
        }
        // The loop really produced both kinds of input.
        assert!(failures > 100 && failures < 5000, "{failures} failures");
    }

    #[test]
    fn random_messages_survive_a_round_trip() {
        let mut noise = Noise(7);
        for _ in 0..1000 {
            let len = noise.below(40);
            let message = MsgProto {
                sequence: noise.next(),
                subject: format!("ch.{}", noise.next()),
                reply: String::new(),
                data: Bytes::from(noise.bytes(len)),
                timestamp: noise.next() as i64,
                redelivered: noise.next().is_multiple_of(2),
                redelivery_count: noise.next() as u32,
                crc32: 0,
            };
            let decoded = MsgProto::decode(Bytes::from(message.encode_to_vec()));
            assert_eq!(decoded.ok(), Some(message));
        }
    }
}
