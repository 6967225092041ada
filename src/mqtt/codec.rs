//! MQTT 3.1 / 3.1.1 packet codec for the hub's own network edge. rumqttd's router does the routing;
//! the edge owns the socket, so it reads and writes packets itself: it needs packet ids and QoS of
//! publishes (which rumqttd's types keep private), the 3.1 protocol level, and small buffers.

use bytes::{Buf, BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// 3 (MQTT 3.1, "MQIsdp") or 4 (MQTT 3.1.1).
    pub protocol_level: u8,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub pkid: u16,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck { session_present: bool, code: u8 },
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe { pkid: u16, filters: Vec<(String, u8)> },
    SubAck { pkid: u16, codes: Vec<u8> },
    Unsubscribe { pkid: u16, filters: Vec<String> },
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
}

/// CONNACK return codes (3.1.1 §3.2.2.3).
pub mod connack {
    pub const ACCEPTED: u8 = 0;
    pub const UNACCEPTABLE_PROTOCOL: u8 = 1;
    pub const IDENTIFIER_REJECTED: u8 = 2;
    pub const SERVER_UNAVAILABLE: u8 = 3;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 4;
    pub const NOT_AUTHORIZED: u8 = 5;
}

/// SUBACK failure code.
pub const SUBACK_FAILURE: u8 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet is larger than allowed; the connection must be closed.
    TooLarge(usize),
    /// Not a valid MQTT packet.
    Malformed(&'static str),
    /// Valid CONNECT framing but a protocol level the hub does not speak.
    UnsupportedProtocol(u8),
}

/// Decodes one packet from the front of `buf`; `Ok(None)` when more bytes are needed.
pub fn decode(buf: &mut BytesMut, max_size: usize) -> Result<Option<Packet>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut remaining: usize = 0;
    let mut shift = 0;
    let mut header_len = 1;
    loop {
        if header_len >= buf.len() {
            return Ok(None);
        }
        if header_len > 4 {
            return Err(DecodeError::Malformed("remaining length"));
        }
        let byte = buf[header_len];
        remaining |= ((byte & 0x7f) as usize) << shift;
        shift += 7;
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let total = header_len + remaining;
    if total > max_size {
        return Err(DecodeError::TooLarge(total));
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header_len);
    parse(first, frame).map(Some)
}

fn need(b: &Bytes, n: usize) -> Result<(), DecodeError> {
    if b.remaining() < n {
        Err(DecodeError::Malformed("truncated packet"))
    } else {
        Ok(())
    }
}

fn u16_of(b: &mut Bytes) -> Result<u16, DecodeError> {
    need(b, 2)?;
    Ok(b.get_u16())
}

fn bytes_of(b: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = u16_of(b)? as usize;
    need(b, len)?;
    Ok(b.split_to(len))
}

fn string_of(b: &mut Bytes) -> Result<String, DecodeError> {
    let raw = bytes_of(b)?;
    let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::Malformed("invalid UTF-8 string"))?;
    if s.contains('\0') {
        return Err(DecodeError::Malformed("NUL in string"));
    }
    Ok(s.to_string())
}

fn parse(first: u8, mut b: Bytes) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0f;
    // PUBREL, SUBSCRIBE and UNSUBSCRIBE carry fixed flags 0b0010; anything else is malformed (MQTT 3.1.1 §2.2.2).
    if matches!(kind, 6 | 8 | 10) && flags != 0b0010 {
        return Err(DecodeError::Malformed("reserved flags"));
    }
    let packet = match kind {
        1 => Packet::Connect(Box::new(parse_connect(&mut b)?)),
        2 => {
            need(&b, 2)?;
            Packet::ConnAck { session_present: b.get_u8() & 1 == 1, code: b.get_u8() }
        }
        3 => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return Err(DecodeError::Malformed("QoS 3"));
            }
            let topic = string_of(&mut b)?;
            let pkid = if qos > 0 { u16_of(&mut b)? } else { 0 };
            if qos > 0 && pkid == 0 {
                return Err(DecodeError::Malformed("packet id 0"));
            }
            Packet::Publish(Publish { dup: flags & 8 != 0, qos, retain: flags & 1 != 0, topic, pkid, payload: b })
        }
        4 => Packet::PubAck(u16_of(&mut b)?),
        5 => Packet::PubRec(u16_of(&mut b)?),
        6 => Packet::PubRel(u16_of(&mut b)?),
        7 => Packet::PubComp(u16_of(&mut b)?),
        8 => {
            let pkid = u16_of(&mut b)?;
            let mut filters = Vec::new();
            while b.has_remaining() {
                let f = string_of(&mut b)?;
                need(&b, 1)?;
                let qos = b.get_u8();
                if qos > 2 {
                    return Err(DecodeError::Malformed("subscription QoS"));
                }
                filters.push((f, qos));
            }
            if filters.is_empty() {
                return Err(DecodeError::Malformed("SUBSCRIBE without filters"));
            }
            Packet::Subscribe { pkid, filters }
        }
        9 => {
            let pkid = u16_of(&mut b)?;
            Packet::SubAck { pkid, codes: b.to_vec() }
        }
        10 => {
            let pkid = u16_of(&mut b)?;
            let mut filters = Vec::new();
            while b.has_remaining() {
                filters.push(string_of(&mut b)?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Malformed("UNSUBSCRIBE without filters"));
            }
            Packet::Unsubscribe { pkid, filters }
        }
        11 => Packet::UnsubAck(u16_of(&mut b)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect,
        _ => return Err(DecodeError::Malformed("unknown packet type")),
    };
    Ok(packet)
}

fn parse_connect(b: &mut Bytes) -> Result<Connect, DecodeError> {
    let name = string_of(b)?;
    need(b, 4)?;
    let level = b.get_u8();
    match (name.as_str(), level) {
        ("MQTT", 4) | ("MQIsdp", 3) => {}
        ("MQTT" | "MQIsdp", l) => return Err(DecodeError::UnsupportedProtocol(l)),
        _ => return Err(DecodeError::Malformed("protocol name")),
    }
    let flags = b.get_u8();
    if flags & 1 != 0 {
        return Err(DecodeError::Malformed("reserved connect flag"));
    }
    let keep_alive = b.get_u16();
    let client_id = string_of(b)?;
    let will = if flags & 0x04 != 0 {
        let topic = string_of(b)?;
        // A will is published to its topic: a filter with wildcards is no topic name (MQTT 3.1.1 §3.1.3.2).
        if topic.contains(['+', '#']) {
            return Err(DecodeError::Malformed("will topic with wildcards"));
        }
        let payload = bytes_of(b)?;
        let qos = (flags >> 3) & 3;
        if qos == 3 {
            return Err(DecodeError::Malformed("will QoS"));
        }
        Some(Will { topic, payload, qos, retain: flags & 0x20 != 0 })
    } else {
        None
    };
    let username = if flags & 0x80 != 0 { Some(string_of(b)?) } else { None };
    let password = if flags & 0x40 != 0 { Some(bytes_of(b)?) } else { None };
    Ok(Connect {
        protocol_level: level,
        client_id,
        clean_session: flags & 0x02 != 0,
        keep_alive,
        username,
        password,
        will,
    })
}

fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// Appends the encoding of `packet` to `out`.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    match packet {
        Packet::Publish(p) => {
            let mut first = 0x30 | (p.qos << 1);
            if p.dup {
                first |= 8;
            }
            if p.retain {
                first |= 1;
            }
            let len = 2 + p.topic.len() + if p.qos > 0 { 2 } else { 0 } + p.payload.len();
            out.reserve(len + 5);
            out.put_u8(first);
            put_remaining_length(out, len);
            put_str(out, p.topic.as_bytes());
            if p.qos > 0 {
                out.put_u16(p.pkid);
            }
            out.put_slice(&p.payload);
        }
        Packet::ConnAck { session_present, code } => {
            out.put_slice(&[0x20, 2, *session_present as u8, *code]);
        }
        Packet::PubAck(id) => put_ack(out, 0x40, *id),
        Packet::PubRec(id) => put_ack(out, 0x50, *id),
        Packet::PubRel(id) => put_ack(out, 0x62, *id),
        Packet::PubComp(id) => put_ack(out, 0x70, *id),
        Packet::UnsubAck(id) => put_ack(out, 0xb0, *id),
        Packet::SubAck { pkid, codes } => {
            out.put_u8(0x90);
            put_remaining_length(out, 2 + codes.len());
            out.put_u16(*pkid);
            out.put_slice(codes);
        }
        Packet::PingReq => out.put_slice(&[0xc0, 0]),
        Packet::PingResp => out.put_slice(&[0xd0, 0]),
        Packet::Disconnect => out.put_slice(&[0xe0, 0]),
        Packet::Subscribe { pkid, filters } => {
            let len = 2 + filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
            out.put_u8(0x82);
            put_remaining_length(out, len);
            out.put_u16(*pkid);
            for (f, q) in filters {
                put_str(out, f.as_bytes());
                out.put_u8(*q);
            }
        }
        Packet::Unsubscribe { pkid, filters } => {
            let len = 2 + filters.iter().map(|f| 2 + f.len()).sum::<usize>();
            out.put_u8(0xa2);
            put_remaining_length(out, len);
            out.put_u16(*pkid);
            for f in filters {
                put_str(out, f.as_bytes());
            }
        }
        Packet::Connect(c) => {
            let mut body = BytesMut::new();
            let (name, level): (&[u8], u8) = if c.protocol_level == 3 { (b"MQIsdp", 3) } else { (b"MQTT", 4) };
            put_str(&mut body, name);
            body.put_u8(level);
            let mut flags = 0u8;
            if c.clean_session {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            body.put_u8(flags);
            body.put_u16(c.keep_alive);
            put_str(&mut body, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                put_str(&mut body, w.topic.as_bytes());
                put_str(&mut body, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(&mut body, u.as_bytes());
            }
            if let Some(p) = &c.password {
                put_str(&mut body, p);
            }
            out.put_u8(0x10);
            put_remaining_length(out, body.len());
            out.put_slice(&body);
        }
    }
}

fn put_ack(out: &mut BytesMut, first: u8, id: u16) {
    out.put_u8(first);
    out.put_u8(2);
    out.put_u16(id);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn round_trip(p: Packet) {
        let mut buf = BytesMut::new();
        encode(&p, &mut buf);
        // Byte by byte: the decoder waits for the whole frame.
        let full = buf.clone();
        let mut partial = BytesMut::new();
        for (i, byte) in full.iter().enumerate() {
            partial.put_u8(*byte);
            let r = decode(&mut partial, 1 << 20).unwrap();
            if i + 1 < full.len() {
                assert_eq!(r, None, "decoded early at byte {i}");
            } else {
                assert_eq!(r, Some(p.clone()));
            }
        }
        assert!(partial.is_empty());
    }

    #[test]
    fn packets_round_trip() {
        round_trip(Packet::Connect(Box::new(Connect {
            protocol_level: 4,
            client_id: "dev-1".into(),
            clean_session: false,
            keep_alive: 30,
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"secret")),
            will: Some(Will {
                topic: "status/dev-1".into(),
                payload: Bytes::from_static(b"gone"),
                qos: 1,
                retain: true,
            }),
        })));
        round_trip(Packet::Connect(Box::new(Connect {
            protocol_level: 3,
            client_id: "old".into(),
            clean_session: true,
            keep_alive: 0,
            username: None,
            password: None,
            will: None,
        })));
        round_trip(Packet::Publish(Publish {
            dup: true,
            qos: 1,
            retain: false,
            topic: "dh/request".into(),
            pkid: 7,
            payload: Bytes::from(vec![b'x'; 300]),
        }));
        round_trip(Packet::Publish(Publish {
            dup: false,
            qos: 0,
            retain: true,
            topic: "a/b".into(),
            pkid: 0,
            payload: Bytes::new(),
        }));
        round_trip(Packet::Subscribe { pkid: 3, filters: vec![("dh/notification/#".into(), 1), ("x".into(), 0)] });
        round_trip(Packet::SubAck { pkid: 3, codes: vec![1, SUBACK_FAILURE] });
        round_trip(Packet::Unsubscribe { pkid: 4, filters: vec!["x".into()] });
        for p in [Packet::PubAck(1), Packet::UnsubAck(2), Packet::PingReq, Packet::PingResp, Packet::Disconnect] {
            round_trip(p);
        }
    }

    #[test]
    fn hostile_input_is_refused_not_panicked() {
        let cases: &[&[u8]] = &[
            &[0x30, 0x02, 0xff, 0xff],             // topic length past the end
            &[0x36, 0x03, 0x00, 0x01, b'a'],       // QoS 3
            &[0x82, 0x02, 0x00, 0x01],             // SUBSCRIBE without filters
            &[0x10, 0x04, 0x00, 0x02, b'X', b'Y'], // bad protocol name
            &[0xf0, 0x00],                         // reserved type
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f], // 5-byte remaining length
        ];
        for case in cases {
            let mut buf = BytesMut::from(*case);
            assert!(decode(&mut buf, 1 << 20).is_err(), "{case:?} accepted");
        }
        let mut big = BytesMut::from(&[0x30u8, 0xff, 0xff, 0x03][..]);
        assert_eq!(decode(&mut big, 1024), Err(DecodeError::TooLarge(65535 + 4)));
    }

    /// Deterministic xorshift64*: the same inputs on every run, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bool(&mut self) -> bool {
            self.next() & 1 == 1
        }
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let len = self.below(max + 1);
            (0..len).map(|_| self.next() as u8).collect()
        }
        /// A valid MQTT string (UTF-8, no NUL), sometimes with wildcards when `wildcards`.
        fn text(&mut self, max: usize, wildcards: bool) -> String {
            const PLAIN: [&str; 8] = ["a", "Z", "/", "dh", "é", "日", " ", "$"];
            const WILD: [&str; 2] = ["+", "#"];
            let len = self.below(max + 1);
            (0..len)
                .map(
                    |_| {
                        if wildcards && self.below(8) == 0 {
                            WILD[self.below(2)]
                        } else {
                            PLAIN[self.below(PLAIN.len())]
                        }
                    },
                )
                .collect()
        }
        fn pkid(&mut self) -> u16 {
            1 + self.below(u16::MAX as usize) as u16
        }
    }

    /// A random packet of every kind the codec has, valid as the decoder requires it.
    fn random_packet(r: &mut Rng) -> Packet {
        match r.below(14) {
            0 => Packet::Connect(Box::new(Connect {
                protocol_level: if r.bool() { 4 } else { 3 },
                client_id: r.text(23, false),
                clean_session: r.bool(),
                keep_alive: r.next() as u16,
                username: r.bool().then(|| r.text(12, true)),
                password: r.bool().then(|| Bytes::from(r.bytes(12))),
                will: r.bool().then(|| Will {
                    topic: r.text(12, false),
                    payload: Bytes::from(r.bytes(20)),
                    qos: r.below(3) as u8,
                    retain: r.bool(),
                }),
            })),
            1 => Packet::ConnAck { session_present: r.bool(), code: r.below(6) as u8 },
            2 => {
                let qos = r.below(3) as u8;
                // Large enough now and then for a multi-byte remaining length.
                let max_payload = if r.below(16) == 0 { 400 } else { 30 };
                Packet::Publish(Publish {
                    dup: r.bool(),
                    qos,
                    retain: r.bool(),
                    topic: r.text(20, false),
                    pkid: if qos > 0 { r.pkid() } else { 0 },
                    payload: Bytes::from(r.bytes(max_payload)),
                })
            }
            3 => Packet::PubAck(r.next() as u16),
            4 => Packet::PubRec(r.next() as u16),
            5 => Packet::PubRel(r.next() as u16),
            6 => Packet::PubComp(r.next() as u16),
            7 => {
                let n = 1 + r.below(4);
                Packet::Subscribe {
                    pkid: r.next() as u16,
                    filters: (0..n).map(|_| (r.text(15, true), r.below(3) as u8)).collect(),
                }
            }
            8 => Packet::SubAck { pkid: r.next() as u16, codes: r.bytes(5) },
            9 => {
                let n = 1 + r.below(4);
                Packet::Unsubscribe { pkid: r.next() as u16, filters: (0..n).map(|_| r.text(15, true)).collect() }
            }
            10 => Packet::UnsubAck(r.next() as u16),
            11 => Packet::PingReq,
            12 => Packet::PingResp,
            _ => Packet::Disconnect,
        }
    }

    /// Decodes what `input` holds, packet by packet, checking the decoder's contract: it never
    /// panics (a read past the buffer would), `Ok(None)` leaves the bytes alone, and a packet takes
    /// bytes only from the front. Returns the packets and whether it stopped at an error.
    fn decode_all(input: &[u8]) -> (Vec<Packet>, bool) {
        let mut buf = BytesMut::from(input);
        let mut packets = Vec::new();
        loop {
            let before = buf.len();
            match decode(&mut buf, 1 << 16) {
                Ok(Some(p)) => {
                    assert!(buf.len() < before, "a packet consumed nothing: {input:?}");
                    assert_eq!(&input[input.len() - buf.len()..], &buf[..]);
                    packets.push(p);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "waiting for more consumed bytes: {input:?}");
                    return (packets, false);
                }
                Err(_) => return (packets, true),
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            let mut input = r.bytes(48);
            // Mostly plausible first bytes, so parsing goes past the fixed header.
            if let Some(first) = input.first_mut() {
                if r.bool() {
                    *first = (1 + r.below(14) as u8) << 4 | if r.bool() { 2 } else { 0 };
                }
            }
            if input.len() > 1 && r.bool() {
                input[1] = (input.len() - 2).min(127) as u8;
            }
            decode_all(&input);
        }
    }

    #[test]
    fn random_packets_round_trip_and_survive_truncation_and_mutation() {
        let mut r = Rng(0x0123_4567_89ab_cdef);
        let mut kinds = HashSet::new();
        for _ in 0..20_000 {
            let packet = random_packet(&mut r);
            kinds.insert(std::mem::discriminant(&packet));
            let mut out = BytesMut::new();
            encode(&packet, &mut out);
            let bytes = out.to_vec();
            assert_eq!(decode_all(&bytes), (vec![packet.clone()], false), "{packet:?}");
            // Every strict prefix is an incomplete packet.
            for cut in 0..bytes.len() {
                assert_eq!(decode_all(&bytes[..cut]), (vec![], false), "{packet:?} cut at {cut}");
            }
            // Every position changed: anything but a panic.
            let mut mutated = bytes.clone();
            for i in 0..bytes.len() {
                mutated[i] = r.next() as u8;
                decode_all(&mutated);
                mutated[i] ^= 0xff;
                decode_all(&mutated);
                mutated[i] = bytes[i];
            }
            // Two packets in a row decode as two.
            let twice = [bytes.clone(), bytes].concat();
            assert_eq!(decode_all(&twice), (vec![packet.clone(), packet], false));
        }
        assert_eq!(kinds.len(), 14, "every packet kind was generated");
    }
}
