#!/usr/bin/env bash
# Syntax checks for the firmware examples that can be checked offline. Run from anywhere.
#
# * micropython/main.py: python3 -m py_compile (syntax only; umqtt and the board modules are not needed).
# * rust-device: a workspace member, built, linted and tested by the normal cargo steps
#   (`cargo test --test api firmware::` runs it against a real hub).
# * esp32-arduino/esp32_hivehub.ino: NOT checked — no Arduino toolchain (arduino-cli, the esp32 core,
#   PubSubClient, ArduinoJson) is available offline. With one:
#   arduino-cli compile --fqbn esp32:esp32:esp32 firmware-examples/esp32-arduino
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== py_compile firmware-examples/micropython/main.py"
python3 -m py_compile firmware-examples/micropython/main.py
rm -rf firmware-examples/micropython/__pycache__  # the .pyc py_compile wrote

if command -v arduino-cli >/dev/null 2>&1 && arduino-cli core list 2>/dev/null | grep -q '^esp32:esp32'; then
    echo "== arduino-cli compile firmware-examples/esp32-arduino"
    arduino-cli compile --fqbn esp32:esp32:esp32 firmware-examples/esp32-arduino
else
    echo "== esp32-arduino: skipped (no arduino-cli with the esp32 core; not checkable offline)"
fi
echo "firmware examples: OK"
