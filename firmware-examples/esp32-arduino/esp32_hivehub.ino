/*
  hivehub ESP32 example device (Arduino core for ESP32, PubSubClient 2.8, ArduinoJson 7).

  What it does, over the hub's DeviceHive MQTT API:
    1. joins WiFi, connects to the hub's MQTT broker with a hub user login and password
       (or an access JWT as the password);
    2. subscribes to its response topics dh/response/<action>@<clientId> FIRST (the hub only
       delivers a response if that exact topic was subscribed before the request), then registers
       itself with a "device/save" request on dh/request and waits for the answer;
    3. subscribes to dh/command/+/+/<deviceId>/# (only after device/save succeeded: the hub refuses
       a command subscription for a device that does not exist yet);
    4. every TELEMETRY period publishes a "notification/insert" request with a reading;
    5. executes each command it receives and answers with "command/update"
       (status "done" + result, or "failed" + error for unusable parameters).

  Commands (same set as the MicroPython and Rust examples):
    ping                              -> {"pong": true, "uptimeSecs": n}
    led          {"on": true|false}   -> {"led": bool}            (drives LED_PIN)
    set-interval {"seconds": 1..3600} -> {"intervalSeconds": n}   (telemetry period)
    read                              -> the current reading
    anything else                     -> {"echo": parameters, "handled": false}

  Set the values in the CONFIGURATION block below. See README.md beside this file.
*/

#include <WiFi.h>
#include <PubSubClient.h>
#include <ArduinoJson.h>

// ============================ CONFIGURATION ============================
static const char *WIFI_SSID = "your-wifi-ssid";
static const char *WIFI_PASSWORD = "your-wifi-password";

static const char *HUB_HOST = "192.168.1.10";  // IP or host name of the hivehub machine
static const uint16_t HUB_MQTT_PORT = 1883;      // [mqtt] listen port of the hub
static const char *HUB_LOGIN = "dhadmin";        // a hub user (MQTT username)
static const char *HUB_PASSWORD = "change-me-now";  // its password, or an access JWT

static const char *DEVICE_ID = "esp32-1";        // letters, digits and dashes only
static const char *DEVICE_NAME = "ESP32 1";
static const long NETWORK_ID = 0;                // 0 = the hub picks the user's first network

static const int LED_PIN = 2;                    // onboard LED of most ESP32 DevKit boards
static const bool USE_TMP36 = false;             // true: read a TMP36 on TMP36_PIN
static const int TMP36_PIN = 34;                 // an ADC1 pin (ADC2 is unusable with WiFi on)

static const uint32_t DEFAULT_TELEMETRY_MS = 10000;
static const uint16_t MQTT_BUFFER_BYTES = 2048;  // see README: PubSubClient's default is 256
// =======================================================================

WiFiClient net;
PubSubClient mqtt(net);

// Topics, built once in setup().
String topicRespSave, topicRespNotification, topicRespUpdate, topicCommands;

// Registration state: 0 = waiting, 1 = success, -1 = error.
volatile int saveResult = 0;
String saveRequestId;

bool registered = false;
bool ledOn = false;
uint32_t telemetryEveryMs = DEFAULT_TELEMETRY_MS;
uint32_t lastTelemetryMs = 0;
uint32_t lastConnectAttemptMs = 0;
uint32_t reconnectDelayMs = 1000;
uint32_t requestCounter = 0;
uint32_t seq = 0;

// Commands are queued by the MQTT callback and executed from loop().
struct PendingCommand {
  int64_t id;
  String name;
  JsonDocument parameters;
};
static const uint8_t QUEUE_SIZE = 4;
PendingCommand queue[QUEUE_SIZE];
uint8_t queueHead = 0, queueCount = 0;

// Ids of recently executed commands, to ignore a QoS 1 redelivery.
int64_t recentIds[8];
uint8_t recentNext = 0;

// ----------------------------------------------------------------------

String nextRequestId(const char *prefix) {
  requestCounter++;
  return String(prefix) + "-" + String(requestCounter);
}

// Serializes `doc` and publishes it on dh/request. PubSubClient publishes with QoS 0.
bool publishRequest(JsonDocument &doc) {
  static char buf[MQTT_BUFFER_BYTES];
  if (doc.overflowed()) {
    Serial.println("JSON document overflowed (out of memory)");
    return false;
  }
  // The MQTT packet holds the fixed header (up to 5 bytes), the topic (2 + its length) and the JSON.
  size_t need = measureJson(doc);
  if (need + 7 + strlen("dh/request") > MQTT_BUFFER_BYTES) {
    Serial.printf("request of %u bytes too large for MQTT_BUFFER_BYTES\n", (unsigned)need);
    return false;
  }
  size_t len = serializeJson(doc, buf, sizeof(buf));
  bool ok = mqtt.publish("dh/request", (const uint8_t *)buf, len, false);
  if (!ok) Serial.println("publish failed");
  return ok;
}

float readCelsius() {
  if (USE_TMP36) {
    // TMP36: 500 mV at 0 degC, 10 mV per degC.
    uint32_t mv = analogReadMilliVolts(TMP36_PIN);
    return ((float)mv - 500.0f) / 10.0f;
  }
  return temperatureRead();  // the chip's internal sensor: rough, reads warm
}

void fillReading(JsonObject reading) {
  reading["celsius"] = roundf(readCelsius() * 10.0f) / 10.0f;
  reading["rssi"] = WiFi.RSSI();
  reading["freeHeap"] = ESP.getFreeHeap();
  reading["led"] = ledOn;
  reading["uptimeSecs"] = millis() / 1000;
  reading["seq"] = seq;
}

void sendTelemetry() {
  seq++;
  JsonDocument doc;
  doc["action"] = "notification/insert";
  doc["requestId"] = nextRequestId("telemetry");
  doc["deviceId"] = DEVICE_ID;
  JsonObject notification = doc["notification"].to<JsonObject>();
  notification["notification"] = "telemetry";
  fillReading(notification["parameters"].to<JsonObject>());
  if (publishRequest(doc)) {
    Serial.printf("telemetry #%lu sent\n", (unsigned long)seq);
  }
}

bool alreadyExecuted(int64_t id) {
  for (uint8_t i = 0; i < sizeof(recentIds) / sizeof(recentIds[0]); i++) {
    if (recentIds[i] == id) return true;
  }
  recentIds[recentNext] = id;
  recentNext = (recentNext + 1) % (sizeof(recentIds) / sizeof(recentIds[0]));
  return false;
}

// Runs one command; fills `result`, returns the status.
const char *execute(const String &name, JsonVariantConst parameters, JsonObject result) {
  if (name == "ping") {
    result["pong"] = true;
    result["uptimeSecs"] = millis() / 1000;
    return "done";
  }
  if (name == "led") {
    if (!parameters["on"].is<bool>()) {
      result["error"] = "parameters.on must be true or false";
      return "failed";
    }
    ledOn = parameters["on"].as<bool>();
    digitalWrite(LED_PIN, ledOn ? HIGH : LOW);
    result["led"] = ledOn;
    return "done";
  }
  if (name == "set-interval") {
    long seconds = parameters["seconds"].is<long>() ? parameters["seconds"].as<long>() : 0;
    if (seconds < 1 || seconds > 3600) {
      result["error"] = "parameters.seconds must be an integer in 1..3600";
      return "failed";
    }
    telemetryEveryMs = (uint32_t)seconds * 1000;
    result["intervalSeconds"] = seconds;
    return "done";
  }
  if (name == "read") {
    fillReading(result);
    return "done";
  }
  result["echo"] = parameters;
  result["handled"] = false;
  return "done";
}

void answerCommand(PendingCommand &cmd) {
  JsonDocument doc;
  doc["action"] = "command/update";
  doc["requestId"] = nextRequestId("update");
  doc["deviceId"] = DEVICE_ID;
  doc["commandId"] = cmd.id;
  JsonObject update = doc["command"].to<JsonObject>();
  const char *status = execute(cmd.name, cmd.parameters.as<JsonVariantConst>(), update["result"].to<JsonObject>());
  update["status"] = status;
  Serial.printf("command %lld \"%s\" -> %s\n", (long long)cmd.id, cmd.name.c_str(), status);
  publishRequest(doc);
}

// MQTT callback. `payload` lives in PubSubClient's buffer, so it is parsed (copied) at once and
// nothing is published from here: commands are queued and answered from loop().
void onMessage(char *topicChars, byte *payload, unsigned int length) {
  String topic(topicChars);
  JsonDocument msg;
  DeserializationError err = deserializeJson(msg, (const byte *)payload, length);
  if (err) {
    Serial.printf("non-JSON message on %s: %s\n", topic.c_str(), err.c_str());
    return;
  }

  if (topic.startsWith("dh/response/")) {
    bool success = msg["status"] == "success";
    if (topic == topicRespSave && msg["requestId"] == saveRequestId) {
      saveResult = success ? 1 : -1;
    }
    if (!success) {
      Serial.printf("error response on %s: %d %s\n", topic.c_str(), msg["code"].as<int>(),
                    msg["error"].as<const char *>() ? msg["error"].as<const char *>() : "");
    }
    return;
  }

  if (topic.startsWith("dh/command/") && msg["action"] == "command/insert") {
    JsonObjectConst command = msg["command"];
    if (!command["id"].is<int64_t>()) return;
    int64_t id = command["id"].as<int64_t>();
    if (alreadyExecuted(id)) return;
    if (queueCount == QUEUE_SIZE) {
      Serial.println("command queue full, dropping a command");
      return;
    }
    PendingCommand &slot = queue[(queueHead + queueCount) % QUEUE_SIZE];
    slot.id = id;
    slot.name = command["command"] | "";
    slot.parameters.clear();
    slot.parameters.set(command["parameters"]);
    queueCount++;
  }
}

void connectWiFi() {
  if (WiFi.status() == WL_CONNECTED) return;
  Serial.printf("WiFi: connecting to %s", WIFI_SSID);
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  uint32_t start = millis();
  while (WiFi.status() != WL_CONNECTED && millis() - start < 20000) {
    delay(250);
    Serial.print('.');
  }
  if (WiFi.status() == WL_CONNECTED) {
    Serial.printf("\nWiFi: connected, IP %s\n", WiFi.localIP().toString().c_str());
  } else {
    Serial.println("\nWiFi: not connected yet, will retry");
  }
}

// Connects, subscribes, registers. Returns true when the device is ready.
bool connectHub() {
  registered = false;
  if (mqtt.connected()) mqtt.disconnect();  // connect() does nothing on a live connection
  Serial.printf("MQTT: connecting to %s:%u as %s\n", HUB_HOST, HUB_MQTT_PORT, HUB_LOGIN);
  if (!mqtt.connect(DEVICE_ID, HUB_LOGIN, HUB_PASSWORD)) {
    // 4 = bad user name or password, 5 = not authorized, -2 = no TCP connection.
    Serial.printf("MQTT: connect failed, state %d\n", mqtt.state());
    return false;
  }

  // 1. Response topics before any request. The hub handles the packets of one connection in
  //    order, so a SUBSCRIBE sent before a PUBLISH is in place when the response is produced.
  mqtt.subscribe(topicRespSave.c_str(), 1);
  mqtt.subscribe(topicRespNotification.c_str(), 1);
  mqtt.subscribe(topicRespUpdate.c_str(), 1);

  // 2. Register and wait for the answer.
  JsonDocument doc;
  doc["action"] = "device/save";
  saveRequestId = nextRequestId("save");
  doc["requestId"] = saveRequestId;
  doc["deviceId"] = DEVICE_ID;
  JsonObject device = doc["device"].to<JsonObject>();
  device["name"] = DEVICE_NAME;
  if (NETWORK_ID > 0) device["networkId"] = NETWORK_ID;
  saveResult = 0;
  if (!publishRequest(doc)) {
    mqtt.disconnect();
    return false;
  }
  uint32_t start = millis();
  while (saveResult == 0 && millis() - start < 10000 && mqtt.connected()) {
    mqtt.loop();
    delay(10);
  }
  if (saveResult != 1) {
    Serial.println(saveResult == 0 ? "device/save: no response" : "device/save: refused");
    mqtt.disconnect();
    return false;
  }
  Serial.println("device/save: registered");

  // 3. Commands for this device (refused by the hub before the device exists).
  if (!mqtt.subscribe(topicCommands.c_str(), 1)) {
    Serial.println("MQTT: command subscription failed");
    mqtt.disconnect();
    return false;
  }
  Serial.printf("listening for commands on %s\n", topicCommands.c_str());
  registered = true;
  lastTelemetryMs = millis() - telemetryEveryMs;  // first telemetry right away
  return true;
}

void setup() {
  Serial.begin(115200);
  delay(200);
  pinMode(LED_PIN, OUTPUT);
  digitalWrite(LED_PIN, LOW);
  if (USE_TMP36) analogReadResolution(12);

  String clientId(DEVICE_ID);
  topicRespSave = "dh/response/device/save@" + clientId;
  topicRespNotification = "dh/response/notification/insert@" + clientId;
  topicRespUpdate = "dh/response/command/update@" + clientId;
  topicCommands = "dh/command/+/+/" + String(DEVICE_ID) + "/#";

  mqtt.setServer(HUB_HOST, HUB_MQTT_PORT);
  mqtt.setCallback(onMessage);
  mqtt.setKeepAlive(30);
  if (!mqtt.setBufferSize(MQTT_BUFFER_BYTES)) {
    Serial.println("cannot allocate the MQTT buffer");
  }
  connectWiFi();
}

void loop() {
  if (WiFi.status() != WL_CONNECTED) {
    registered = false;
    connectWiFi();
    return;
  }

  if (!mqtt.connected() || !registered) {
    uint32_t now = millis();
    if (now - lastConnectAttemptMs >= reconnectDelayMs || lastConnectAttemptMs == 0) {
      lastConnectAttemptMs = now;
      if (connectHub()) {
        reconnectDelayMs = 1000;
      } else {
        reconnectDelayMs = reconnectDelayMs >= 30000 ? 60000 : reconnectDelayMs * 2;
        Serial.printf("retrying in %lu ms\n", (unsigned long)reconnectDelayMs);
      }
    }
    return;
  }

  mqtt.loop();

  while (queueCount > 0) {
    answerCommand(queue[queueHead]);
    queueHead = (queueHead + 1) % QUEUE_SIZE;
    queueCount--;
  }

  if (millis() - lastTelemetryMs >= telemetryEveryMs) {
    lastTelemetryMs = millis();
    sendTelemetry();
  }
}
