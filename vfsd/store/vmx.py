"""The .vmx settings file: VMware's `key = "value"` lines, which `vfsd vm` reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class VmSettings:
    name: str
    memory: int  # bytes
    firmware: str  # "bios" or "uefi"
    vcpus: int = 1
    disks: list[str] = field(default_factory=list)  # descriptor file names, in slot order

    def render(self) -> bytes:
        lines = [
            '.encoding = "UTF-8"',
            'config.version = "8"',
            'virtualHW.version = "14"',
            f'displayName = "{self.name}"',
            'guestOS = "other-64"',
            f'memSize = "{self.memory // (1024 * 1024)}"',
            f'numvcpus = "{self.vcpus}"',
            f'firmware = "{"efi" if self.firmware == "uefi" else "bios"}"',
            f'nvram = "{self.name}.nvram"',
            f'sched.swap.derivedName = "{self.name}.vswp"',
            'scsi0.present = "TRUE"',
            'scsi0.virtualDev = "lsilogic"',
        ]
        for slot, disk in enumerate(self.disks):
            lines.append(f'scsi0:{slot}.present = "TRUE"')
            lines.append(f'scsi0:{slot}.fileName = "{disk}"')
        return ("\n".join(lines) + "\n").encode()

    @classmethod
    def parse(cls, text: bytes) -> VmSettings:
        values: dict[str, str] = {}
        for line in text.decode(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip('"')
        slots = sorted(
            (int(key[len("scsi0:"):-len(".fileName")]), value)
            for key, value in values.items()
            if key.startswith("scsi0:") and key.endswith(".fileName")
        )
        return cls(
            name=values.get("displayName", ""),
            memory=int(values.get("memSize", "0")) * 1024 * 1024,
            firmware="uefi" if values.get("firmware") == "efi" else "bios",
            vcpus=int(values.get("numvcpus", "1")),
            disks=[disk for _slot, disk in slots],
        )
