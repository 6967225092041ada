# hivehub MicroPython example device (ESP32 / ESP8266 / Raspberry Pi Pico W) using umqtt.simple.
#
# Over the hub's DeviceHive MQTT API it:
#   1. joins WiFi and connects to the hub's MQTT broker with a hub user login and password
#      (or an access JWT as the password);
#   2. subscribes to its response topics dh/response/<action>@<clientId> FIRST (the hub delivers a
#      response only if that exact topic was subscribed before the request), then registers with a
#      "device/save" request on dh/request and waits for the answer;
#   3. subscribes to dh/command/+/+/<deviceId>/# (only after device/save succeeded: the hub refuses
#      a command subscription for a device that does not exist yet);
#   4. publishes a "notification/insert" telemetry request every TELEMETRY_SECONDS;
#   5. executes each command and answers it with "command/update" (status "done" + result, or
#      "failed" + error when the parameters are unusable).
#
# Commands (same set as the Arduino and Rust examples):
#   ping                              -> {"pong": true, "uptimeSecs": n}
#   led          {"on": true|false}   -> {"led": bool}            (drives LED_PIN)
#   set-interval {"seconds": 1..3600} -> {"intervalSeconds": n}   (telemetry period)
#   read                              -> the current reading
#   anything else                     -> {"echo": parameters, "handled": false}
#
# Configure the block below (or put the same names in a config.py next to this file), copy this
# file to the board as main.py. See README.md.

import json
import time

try:  # MicroPython only; absent when this file is syntax-checked or run on a PC.
    import machine
    import network
except ImportError:
    machine = None
    network = None

from umqtt.simple import MQTTClient, MQTTException

# ============================ CONFIGURATION ============================
WIFI_SSID = "your-wifi-ssid"
WIFI_PASSWORD = "your-wifi-password"

HUB_HOST = "192.168.1.10"  # IP or host name of the hivehub machine
HUB_MQTT_PORT = 1883  # [mqtt] listen port of the hub
HUB_LOGIN = "dhadmin"  # a hub user (MQTT username)
HUB_PASSWORD = "change-me-now"  # its password, or an access JWT

DEVICE_ID = "upy-1"  # letters, digits and dashes only
DEVICE_NAME = "MicroPython 1"
NETWORK_ID = None  # None = the hub picks the user's first network

LED_PIN = 2  # onboard LED of most ESP32 boards ("LED" on a Pico W)
TELEMETRY_SECONDS = 10
KEEPALIVE_SECONDS = 60
RESPONSE_TIMEOUT_MS = 10000
# =======================================================================

try:  # optional overrides kept out of main.py
    from config import *  # noqa: F401,F403
except ImportError:
    pass

# Portable time helpers (MicroPython has ticks_ms; CPython does not).
if hasattr(time, "ticks_ms"):
    ticks_ms, ticks_add, ticks_diff, sleep_ms = time.ticks_ms, time.ticks_add, time.ticks_diff, time.sleep_ms
else:

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_add(a, b):
        return a + b

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        time.sleep(ms / 1000)


CLIENT_ID = DEVICE_ID
TOPIC_RESP_SAVE = "dh/response/device/save@" + CLIENT_ID
TOPIC_RESP_NOTIFICATION = "dh/response/notification/insert@" + CLIENT_ID
TOPIC_RESP_UPDATE = "dh/response/command/update@" + CLIENT_ID
TOPIC_COMMANDS = "dh/command/+/+/" + DEVICE_ID + "/#"


class Device:
    def __init__(self):
        self.started = ticks_ms()
        self.led_on = False
        self.interval_ms = TELEMETRY_SECONDS * 1000
        self.seq = 0
        self.request_counter = 0
        self.save_request_id = None
        self.save_result = None  # None = waiting, else the response object
        self.pending = []  # commands to execute, queued by the MQTT callback
        self.recent_ids = []
        self.client = None
        self.led = None
        self.adc = None
        if machine is not None:
            try:
                self.led = machine.Pin(LED_PIN, machine.Pin.OUT)
                self.led.value(0)
            except Exception as e:  # a board without that pin
                print("no LED:", e)

    # ---- hardware ----------------------------------------------------

    def uptime_secs(self):
        return ticks_diff(ticks_ms(), self.started) // 1000

    def celsius(self):
        # ESP32: esp32.mcu_temperature() (newer ports) or raw_temperature() in Fahrenheit.
        try:
            import esp32

            if hasattr(esp32, "mcu_temperature"):
                return esp32.mcu_temperature()
            return round((esp32.raw_temperature() - 32) / 1.8, 1)
        except Exception:
            pass
        # RP2040 (Pico W): ADC channel 4 is the internal sensor.
        try:
            if self.adc is None:
                self.adc = machine.ADC(4)
            volts = self.adc.read_u16() * 3.3 / 65535
            return round(27 - (volts - 0.706) / 0.001721, 1)
        except Exception:
            return None

    def reading(self):
        return {
            "celsius": self.celsius(),
            "led": self.led_on,
            "uptimeSecs": self.uptime_secs(),
            "seq": self.seq,
        }

    def execute(self, name, parameters):
        """Runs one command; returns (status, result)."""
        if not isinstance(parameters, dict):
            parameters = {}
        if name == "ping":
            return "done", {"pong": True, "uptimeSecs": self.uptime_secs()}
        if name == "led":
            on = parameters.get("on")
            if not isinstance(on, bool):
                return "failed", {"error": "parameters.on must be true or false"}
            self.led_on = on
            if self.led is not None:
                self.led.value(1 if on else 0)
            return "done", {"led": on}
        if name == "set-interval":
            seconds = parameters.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= 3600:
                return "failed", {"error": "parameters.seconds must be an integer in 1..3600"}
            self.interval_ms = seconds * 1000
            return "done", {"intervalSeconds": seconds}
        if name == "read":
            return "done", self.reading()
        return "done", {"echo": parameters, "handled": False}

    # ---- MQTT --------------------------------------------------------

    def next_request_id(self, action):
        self.request_counter += 1
        return "%s-%d" % (action.replace("/", "-"), self.request_counter)

    def request(self, action, body, qos=1, request_id=None):
        # With qos=1, publish() waits for the PUBACK and the hub sends the response before it, so
        # the response can reach on_message before publish() returns: a caller that waits for the
        # response chooses the request id first (request_id=...).
        request_id = request_id or self.next_request_id(action)
        body["action"] = action
        body["requestId"] = request_id
        self.client.publish(b"dh/request", json.dumps(body).encode(), qos=qos)
        return request_id

    def on_message(self, topic, payload):
        # Called from inside umqtt (also while it waits for SUBACK/PUBACK): only record here.
        topic = topic.decode() if isinstance(topic, bytes) else topic
        try:
            msg = json.loads(payload)
        except ValueError:
            print("non-JSON message on", topic)
            return
        if topic.startswith("dh/response/"):
            if topic == TOPIC_RESP_SAVE and msg.get("requestId") == self.save_request_id:
                self.save_result = msg
            if msg.get("status") != "success":
                print("error response:", topic, msg.get("code"), msg.get("error"))
            return
        if topic.startswith("dh/command/") and msg.get("action") == "command/insert":
            command = msg.get("command") or {}
            cid = command.get("id")
            if not isinstance(cid, int) or cid in self.recent_ids:
                return
            self.recent_ids.append(cid)
            if len(self.recent_ids) > 16:
                self.recent_ids.pop(0)
            self.pending.append(command)

    def connect(self):
        self.client = MQTTClient(
            CLIENT_ID,
            HUB_HOST,
            port=HUB_MQTT_PORT,
            user=HUB_LOGIN,
            password=HUB_PASSWORD,
            keepalive=KEEPALIVE_SECONDS,
        )
        self.client.set_callback(self.on_message)
        # Raises MQTTException(4 or 5) on bad credentials.
        self.client.connect()
        print("MQTT: connected to %s:%d" % (HUB_HOST, HUB_MQTT_PORT))

        # 1. Response topics before any request (subscribe() waits for the SUBACK).
        for topic in (TOPIC_RESP_SAVE, TOPIC_RESP_NOTIFICATION, TOPIC_RESP_UPDATE):
            self.client.subscribe(topic.encode(), qos=1)

        # 2. Register and wait for the answer.
        device = {"name": DEVICE_NAME}
        if NETWORK_ID is not None:
            device["networkId"] = NETWORK_ID
        self.save_result = None
        self.save_request_id = self.next_request_id("device/save")
        self.request("device/save", {"deviceId": DEVICE_ID, "device": device}, request_id=self.save_request_id)
        deadline = ticks_add(ticks_ms(), RESPONSE_TIMEOUT_MS)
        while self.save_result is None and ticks_diff(deadline, ticks_ms()) > 0:
            self.client.check_msg()
            sleep_ms(20)
        if self.save_result is None:
            raise OSError("no device/save response")
        if self.save_result.get("status") != "success":
            raise RuntimeError("device/save refused: %s" % self.save_result.get("error"))
        print("device/save: registered as", DEVICE_NAME)

        # 3. Commands for this device (the hub refuses this before the device exists).
        self.client.subscribe(TOPIC_COMMANDS.encode(), qos=1)
        print("listening for commands on", TOPIC_COMMANDS)

    def send_telemetry(self):
        self.seq += 1
        reading = self.reading()
        notification = {"notification": "telemetry", "parameters": reading}
        self.request("notification/insert", {"deviceId": DEVICE_ID, "notification": notification}, qos=0)
        print("telemetry", reading)

    def answer(self, command):
        name = command.get("command")
        status, result = self.execute(name, command.get("parameters"))
        print("command", command.get("id"), name, "->", status, result)
        update = {"deviceId": DEVICE_ID, "commandId": command["id"], "command": {"status": status, "result": result}}
        self.request("command/update", update)

    def serve(self, max_seconds=None):
        """Telemetry and commands until the connection fails (or max_seconds pass, for tests)."""
        started = ticks_ms()
        last_telemetry = ticks_add(ticks_ms(), -self.interval_ms)  # first telemetry right away
        last_sent = ticks_ms()
        while max_seconds is None or ticks_diff(ticks_ms(), started) < max_seconds * 1000:
            self.client.check_msg()
            while self.pending:
                self.answer(self.pending.pop(0))
                last_sent = ticks_ms()
            now = ticks_ms()
            if ticks_diff(now, last_telemetry) >= self.interval_ms:
                last_telemetry = now
                self.send_telemetry()
                last_sent = now
            elif ticks_diff(now, last_sent) >= KEEPALIVE_SECONDS * 500:
                self.client.ping()  # keep the connection alive with long telemetry periods
                last_sent = now
            sleep_ms(50)

    def close(self):
        try:
            self.client.disconnect()
        except Exception:
            pass


def connect_wifi():
    if network is None:
        return  # not on a board: assume the host has a network
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        print("WiFi: connecting to", WIFI_SSID)
        wlan.connect(WIFI_SSID, WIFI_PASSWORD)
        deadline = ticks_add(ticks_ms(), 20000)
        while not wlan.isconnected() and ticks_diff(deadline, ticks_ms()) > 0:
            sleep_ms(250)
    if not wlan.isconnected():
        raise OSError("WiFi not connected")
    print("WiFi: connected", wlan.ifconfig()[0])


def main():
    device = Device()
    backoff = 1
    while True:
        try:
            connect_wifi()
            device.connect()
            backoff = 1
            device.serve()
        except MQTTException as e:
            # 4 = bad user name or password, 5 = not authorized, 0x80 = subscription refused.
            print("MQTT refused:", e)
        except (OSError, RuntimeError) as e:
            print("connection lost:", e)
        device.close()
        print("retrying in %d s" % backoff)
        time.sleep(backoff)
        backoff = min(backoff * 2, 60)


if __name__ == "__main__":
    main()
