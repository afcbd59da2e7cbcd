// Rules of the fleet tests: each marker the fixture fleet plants.
rule fleet_base_marker { strings: $a = "VMSCOPE_FLEET_BASE_MARKER" condition: $a }
rule fleet_overlay_marker { meta: severity = "high" strings: $a = "VMSCOPE_FLEET_OVERLAY_MARKER" condition: $a }
rule fleet_raw_marker { strings: $a = "VMSCOPE_FLEET_RAW_MARKER" condition: $a }
