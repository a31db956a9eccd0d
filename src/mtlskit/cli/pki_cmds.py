"""PKI commands: init, ca, csr, sign, issue, inspect, verify, export."""

from __future__ import annotations

from pathlib import Path

import click

from mtlskit.cli.common import read_passphrase

KEY_TYPES = ("p256", "p384", "ed25519", "rsa2048", "rsa3072", "rsa4096")


@click.command(help="Write the seed's CA, server and client key/CSR/certificate files.")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("certs"),
    show_default=True,
    help="Folder to write into.",
)
@click.option(
    "--key-type",
    type=click.Choice(KEY_TYPES),
    default="p256",
    show_default=True,
    help="rsa4096 reproduces the seed exactly.",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Encrypt ca.key with the first line of this file.",
)
def init(folder: Path, key_type: str, force: bool, passphrase_file: Path | None) -> None:
    from mtlskit.pki.seed import init_seed

    passphrase = read_passphrase(passphrase_file, prompt=False)
    paths = init_seed(folder, key_type=key_type, force=force, passphrase=passphrase)
    for path in paths:
        mode = path.stat().st_mode & 0o777
        click.echo(f"wrote {path} ({mode:04o})")
    click.echo(f"next: mtlskit serve --certs {folder}   (then: mtlskit get --certs {folder})")
