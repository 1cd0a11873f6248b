"""HL7 v2 over MLLP: orders and results from a hospital's RIS drive the live worklist."""
