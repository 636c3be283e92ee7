"""nginx terminating TLS in front of the broker, as on an AKTIN broker server (Apache or nginx
in front of the Java broker): for the benchmark's HTTPS figures."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from tests.peers import free_port, stop, wait_for_port
from tests.peers.certificate import self_signed


class TlsFront:
    def __init__(self, directory: Path, backend_port: int) -> None:
        directory.mkdir(parents=True)
        self.certificate, key = self_signed(directory)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        config = directory / "nginx.conf"
        config.write_text(textwrap.dedent(f"""\
            worker_processes 1;
            pid {directory}/nginx.pid;
            error_log {directory}/error.log;
            events {{ worker_connections 256; }}
            http {{
                access_log off;
                client_body_temp_path {directory}/body;
                proxy_temp_path {directory}/proxy;
                upstream broker {{ server 127.0.0.1:{backend_port}; keepalive 16; }}
                server {{
                    listen 127.0.0.1:{self.port} ssl;
                    ssl_certificate {self.certificate};
                    ssl_certificate_key {key};
                    client_max_body_size 0;
                    location / {{
                        proxy_pass http://broker;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_buffering off;
                    }}
                }}
            }}
            """))
        self.process = subprocess.Popen(
            ["nginx", "-c", str(config), "-p", str(directory), "-g", "daemon off; user root;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 10)

    def stop(self) -> None:
        stop(self.process, 10)
