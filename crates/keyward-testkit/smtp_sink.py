"""An SMTP server for keyward's tests: aiosmtpd, an independent implementation of SMTP,
receives each mail and Python's own mail parser reads it. Every mail becomes one JSON file
(to, from, subject, text, html) in the output directory, written whole (temp file, rename).

    python3 smtp_sink.py HOST PORT DIR

It prints "ready" once it listens and runs until it is killed.
"""
import email
import email.policy
import json
import os
import sys
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out):
        self.out = out
        self.n = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)

        def part(kind):
            body = msg.get_body(preferencelist=(kind,))
            return body.get_content() if body is not None else None

        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "content_type": msg.get_content_type(),
            "text": part("plain"),
            "html": part("html"),
        }
        with self.lock:
            self.n += 1
            name = "%06d-%d" % (self.n, os.getpid())
        tmp = os.path.join(self.out, name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.out, name + ".json"))
        return "250 OK"


def main():
    host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    controller = Controller(Sink(out), hostname=host, port=port)
    controller.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
