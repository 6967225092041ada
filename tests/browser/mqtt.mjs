// A minimal MQTT 3.1.1 client over net.Socket for the browser tests: CONNECT with username/password,
// SUBSCRIBE, PUBLISH at QoS 0/1 and reception of PUBLISH packets (PUBACKed at QoS 1). Enough to play
// a device; no dependency.

import net from 'node:net';

const encodeLength = (n) => {
  const out = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return Buffer.from(out);
};
const str = (s) => {
  const b = Buffer.from(s, 'utf8');
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
};
const packet = (type, flags, body) => Buffer.concat([Buffer.from([(type << 4) | flags]), encodeLength(body.length), body]);

export class MqttClient {
  /** Connects and resolves once CONNACK 0 arrived; `onMessage(topic, text)` gets every PUBLISH. */
  static connect({ host, port, clientId, username, password, onMessage }) {
    return new Promise((resolve, reject) => {
      const client = new MqttClient();
      client.onMessage = onMessage || (() => {});
      client.buffer = Buffer.alloc(0);
      client.nextId = 1;
      client.waiting = new Map();
      const socket = net.connect({ host, port });
      client.socket = socket;
      socket.on('error', reject);
      socket.on('connect', () => {
        let flags = 0x02; // clean session
        const payload = [str(clientId)];
        if (username !== undefined) {
          flags |= 0x80;
          payload.push(str(username));
        }
        if (password !== undefined) {
          flags |= 0x40;
          payload.push(str(password));
        }
        const variable = Buffer.concat([str('MQTT'), Buffer.from([4, flags, 0, 60])]);
        socket.write(packet(1, 0, Buffer.concat([variable, ...payload])));
      });
      client.onConnack = (code) => (code === 0 ? resolve(client) : reject(new Error(`CONNACK ${code}`)));
      socket.on('data', (data) => client.receive(data));
    });
  }

  receive(data) {
    this.buffer = Buffer.concat([this.buffer, data]);
    for (;;) {
      if (this.buffer.length < 2) return;
      let length = 0;
      let multiplier = 1;
      let i = 1;
      let byte;
      do {
        if (i >= this.buffer.length) return;
        byte = this.buffer[i++];
        length += (byte & 0x7f) * multiplier;
        multiplier *= 128;
      } while (byte & 0x80);
      if (this.buffer.length < i + length) return;
      const header = this.buffer[0];
      const body = this.buffer.subarray(i, i + length);
      this.buffer = this.buffer.subarray(i + length);
      this.handle(header >> 4, header & 0x0f, body);
    }
  }

  handle(type, flags, body) {
    if (type === 2) this.onConnack(body[1]);
    else if (type === 9 || type === 4) {
      const id = body.readUInt16BE(0);
      this.waiting.get(id)?.(type === 9 ? body[2] : 0);
      this.waiting.delete(id);
    } else if (type === 3) {
      const qos = (flags >> 1) & 3;
      const topicLength = body.readUInt16BE(0);
      const topic = body.subarray(2, 2 + topicLength).toString('utf8');
      let offset = 2 + topicLength;
      if (qos > 0) {
        const id = body.readUInt16BE(offset);
        offset += 2;
        this.socket.write(packet(4, 0, Buffer.from([id >> 8, id & 0xff])));
      }
      this.onMessage(topic, body.subarray(offset).toString('utf8'));
    }
  }

  /** Subscribes; resolves with the SUBACK return code (0x80 = refused). */
  subscribe(filter, qos = 1) {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.socket.write(packet(8, 2, Buffer.concat([Buffer.from([id >> 8, id & 0xff]), str(filter), Buffer.from([qos])])));
    });
  }

  /** Publishes at QoS 1 and resolves on PUBACK. */
  publish(topic, text) {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.socket.write(packet(3, 2, Buffer.concat([str(topic), Buffer.from([id >> 8, id & 0xff]), Buffer.from(text, 'utf8')])));
    });
  }

  close() {
    this.socket.write(Buffer.from([0xe0, 0]));
    this.socket.end();
  }
}
