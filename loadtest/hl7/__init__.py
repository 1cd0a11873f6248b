"""The sending side of HL7, as a hospital's RIS would be: `builder` turns planned exams
into messages in a site's dialect, `client` speaks MLLP, `send` sends files of messages
(`python -m loadtest.hl7.send FILE... --port 2575`)."""

from __future__ import annotations
