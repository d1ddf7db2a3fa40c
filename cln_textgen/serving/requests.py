"""A generation request's JSON body, checked field by field, and the server's limits.

The fields are the command line's: ``label``, ``n``, ``prompt``,
``negative_label`` and one per row of the table of generation options (:mod:`cln_textgen.options`), checked
by the same rules.  Every problem is a :class:`RequestError` naming the
field, which the HTTP layer answers with a 4xx JSON error: a request reaches
the model only with values the command line would accept.
"""

import dataclasses

from cln_textgen import options as table
from cln_textgen.errors import UserError


@dataclasses.dataclass(frozen=True)
class Limits:
    max_n: int = 16  # texts per label in one request
    max_new_tokens: int = 256
    max_body_bytes: int = 64 * 1024
    max_queue: int = 32  # requests waiting or running; more are refused with 503
    max_batch_rows: int = 64  # rows decoded together (a guided text takes two)

    def check(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"{field.name} must be >= 1")
        return self


class RequestError(Exception):
    def __init__(self, field, message, status=422):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.status = field, status


@dataclasses.dataclass
class Request:
    label: object  # a name, "all", a mix ({name: weight}), or a list of names and mixes
    n: int  # texts per label
    prompt: str
    options: dict  # the options the request set; the run's generate: section gives the rest
    negative_label: str | None = None  # what guidance contrasts with (None: the null condition)


BASE_FIELDS = {"label": "a label name, 'all', a mix such as {\"positive\": 0.7, \"negative\": "
                        "0.3}, or a list of names and mixes",
               "n": "texts per label (default: by decoding mode, as on the command line)",
               "prompt": "text every sample starts with",
               "negative_label": "with guidance above 1: the label guidance pushes away from "
                                 "(default: the null condition)"}


def fields():
    """Every field a request may carry, with what it means."""
    return {**BASE_FIELDS, **{o.name: o.help for o in table.OPTIONS}}


def parse_request(body, generator, limits):
    """A :class:`Request` from a decoded JSON ``body``, or :class:`RequestError`."""
    if not isinstance(body, dict):
        raise RequestError(None, "the body must be a JSON object of request fields")
    known = fields()
    for key in body:
        if key not in known:
            raise RequestError(key, f"unknown field; valid fields: {', '.join(known)}")
    if "label" not in body:
        raise RequestError("label", f"required: one of {', '.join(generator.labels)}, or 'all'")
    label, prompt, n = body["label"], body.get("prompt", ""), body.get("n")
    negative = body.get("negative_label")
    if not isinstance(label, (str, dict, list)) or not label:
        raise RequestError("label", "must be a label name, 'all', a mix {name: weight, ...} "
                                    f"or a list of them, got {label!r}")
    if not isinstance(prompt, str):
        raise RequestError("prompt", "must be a string")
    if negative is not None and not isinstance(negative, str):
        raise RequestError("negative_label", f"must be a label name, got {negative!r}")
    overrides = {name: body[name] for name in table.BY_NAME if name in body}
    for name, value in overrides.items():
        broken = table.check(name, value)
        if broken:
            raise RequestError(name, f"{broken}, got {value!r}")
    try:
        opts = table.resolve(generator.defaults, overrides)
    except UserError as e:
        raise RequestError(None, str(e)) from None
    for field, check in (("label", lambda: generator.label_ids(label)),
                         ("negative_label", lambda: generator.contrast(opts, negative))):
        try:
            check()
        except UserError as e:
            raise RequestError(field, str(e)) from None
    if n is None:
        n = table.default_n(opts)
    elif not isinstance(n, int) or isinstance(n, bool):
        raise RequestError("n", f"must be an integer, got {n!r}")
    problem = table.check_n(n, opts)
    if problem:
        raise RequestError("n", problem.split(": ", 1)[-1])
    if n > limits.max_n:
        raise RequestError("n", f"at most {limits.max_n} on this server, got {n}")
    if opts.max_new_tokens > limits.max_new_tokens:
        raise RequestError("max_new_tokens", f"at most {limits.max_new_tokens} on this server, "
                                             f"got {opts.max_new_tokens}")
    return Request(label, n, prompt, overrides, negative)
