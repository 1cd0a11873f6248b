"""Helpers the tests share (never tests themselves): synthetic exams, a protocol client,
the HL7 sending side."""
