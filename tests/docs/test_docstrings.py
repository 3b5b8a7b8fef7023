"""Every public name of ipvs/ has a docstring, so every API page says what it documents.

Public: a module's ``__all__``, or its names without a leading underscore,
that are functions or classes defined in that module, and the public
methods those classes define.  The API pages (autodoc, type hints in the
description) show exactly these.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import ipvs


def modules() -> list[str]:
    return ["ipvs"] + sorted(m.name for m in pkgutil.walk_packages(ipvs.__path__, "ipvs."))


def public_names(mod):
    names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
    for name in names:
        obj = getattr(mod, name, None)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == mod.__name__:
            yield name, obj


def undocumented() -> list[str]:
    missing = []
    for modname in modules():
        mod = importlib.import_module(modname)
        if not (mod.__doc__ or "").strip():
            missing.append(modname)
        for name, obj in public_names(mod):
            if not (obj.__doc__ or "").strip():
                missing.append(f"{modname}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(member, property):
                        if not (member.__doc__ or "").strip():
                            missing.append(f"{modname}.{name}.{attr}")
                        continue
                    func = member
                    if isinstance(func, (staticmethod, classmethod)):
                        func = func.__func__
                    if inspect.isfunction(func) and not (func.__doc__ or "").strip():
                        missing.append(f"{modname}.{name}.{attr}")
    return missing


def test_every_public_name_has_a_docstring():
    assert undocumented() == []


def test_the_check_sees_a_missing_docstring():
    def public_function():
        pass

    class Public:
        def method(self):
            pass

    fake = type(inspect)("ipvs._fake_for_test")
    public_function.__module__ = Public.__module__ = fake.__name__
    fake.public_function, fake.Public = public_function, Public
    assert [n for n, _ in public_names(fake)] == ["public_function", "Public"]
    assert not public_function.__doc__ and not Public.method.__doc__
