"""The public API's docstrings as a checked contract (issue 17): every public
class, function and method has a numpydoc summary, documents each parameter
with a description, and says what it returns, as scikit-learn's
``test_docstrings.py`` checks its own."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import moelearn

validate = pytest.importorskip("numpydoc.validate", reason="numpydoc (dev extra)")

#: numpydoc's checks that make the contract: a docstring and a one-line summary
#: (GL08, SS01, SS03, SS05), every parameter documented, known, described and
#: written as a sentence (PR01, PR02, PR06-PR09), a Returns section with a type
#: and a description (RT01-RT03). Style (closing quotes, summary length), See
#: Also and Examples are not part of it.
CHECKED = {
    "GL08",
    "SS01",
    "SS03",
    "SS05",
    "PR01",
    "PR02",
    "PR06",
    "PR07",
    "PR08",
    "PR09",
    "RT01",
    "RT02",
    "RT03",
}


def public_objects() -> list[str]:
    """``moelearn.__all__``'s classes and functions and the public methods and
    properties its classes define or inherit from moelearn's own modules."""
    names = []
    for name in moelearn.__all__:
        obj = getattr(moelearn, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # (__version__)
        names.append(f"moelearn.{name}")
        if not inspect.isclass(obj):
            continue
        for attribute in dir(obj):
            if attribute.startswith("_"):
                continue
            owner = next((k for k in obj.__mro__ if attribute in k.__dict__), None)
            if owner is None or not owner.__module__.startswith("moelearn"):
                continue
            member = inspect.getattr_static(obj, attribute)
            if inspect.isfunction(member) or isinstance(member, property):
                names.append(f"{owner.__module__}.{owner.__qualname__}.{attribute}")
    return list(dict.fromkeys(names))


def test_the_public_api_is_large_enough_to_check():
    assert len(public_objects()) >= 30


@pytest.mark.parametrize("name", public_objects())
def test_docstring_follows_numpydoc(name):
    result = validate.validate(name)
    errors = [(code, message) for code, message in result["errors"] if code in CHECKED]
    obj = getattr(moelearn, name.removeprefix("moelearn."), None)
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        # a result record: its fields are documented as Attributes instead
        from numpydoc.docscrape import ClassDoc

        documented = {item.name for item in ClassDoc(obj)["Attributes"]}
        fields = {field.name for field in dataclasses.fields(obj)}
        assert fields <= documented, f"{name}: undocumented {fields - documented}"
        errors = [(c, m) for c, m in errors if c != "PR01"]
    assert not errors, "\n".join(
        f"{name}: {code} {message}" for code, message in errors
    )


def test_shared_entries_expand_with_their_indentation_and_section():
    """A ``{name}`` line becomes the shared entry, indented as the placeholder;
    ``{Section:name}`` adds the section's header and underline."""
    from moelearn._docstrings import ENTRIES, fill

    doc = "Summary.\n\n    {Parameters:X_y}\n    extra : int\n        More.\n"
    filled = fill(doc)
    lines = filled.splitlines()
    assert lines[2:4] == ["    Parameters", "    ----------"]
    expected = ["    " + line for line in ENTRIES["X_y"].splitlines()]
    assert lines[4 : 4 + len(expected)] == expected
    assert lines[-2:] == ["    extra : int", "        More."]
    # braces inside a line (a set of choices) are not placeholders
    assert fill("link : {'linear', 'sigmoid'}") == "link : {'linear', 'sigmoid'}"


def test_an_unknown_shared_entry_fails_loudly():
    from moelearn._docstrings import shared_entries

    def documented():
        """Summary.

        {no_such_entry}
        """

    with pytest.raises(KeyError, match="no_such_entry"):
        shared_entries(documented)
