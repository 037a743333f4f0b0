"""The seed's domains, written only against public names: ``bank.BankAccount`` and ``users.User``."""

from __future__ import annotations
