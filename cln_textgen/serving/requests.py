"""A generation request's JSON body, checked field by field.

Every problem is a :class:`RequestError` naming the field, which the HTTP
layer answers with a 4xx JSON error: a request never reaches the model with a
value the command line would refuse.
"""

import dataclasses

from cln_textgen.errors import UserError
from cln_textgen.generation.options import OPTIONS


class RequestError(Exception):
    def __init__(self, field, message, status=422):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.message, self.status = field, message, status

    def to_json(self):
        return {"error": str(self), "field": self.field}


@dataclasses.dataclass
class Request:
    label: object  # a name, "all", or {name: weight}
    label_ids: list  # the labels whose texts come back, in order
    n: int
    prompt: str
    options: dict  # only the options the request set; the run's defaults fill the rest


_BASE_FIELDS = {"label": "a label name, 'all', or {name: weight}", "n": "texts per label",
                "prompt": "text every sample starts with"}


def fields():
    """Every field a request may carry, with a short description."""
    return {**_BASE_FIELDS, **{o.name: o.help for o in OPTIONS}}


def parse_request(body, generator, limits):
    if not isinstance(body, dict):
        raise RequestError(None, "the body must be a JSON object")
    known = fields()
    for key in body:
        if key not in known:
            raise RequestError(key, f"unknown field; valid fields: {', '.join(known)}")
    if "label" not in body:
        raise RequestError("label", f"required; one of {', '.join(generator.labels)}, or 'all'")
    label = body["label"]
    if not isinstance(label, (str, dict)):
        raise RequestError("label", "must be a label name, 'all', or an object {name: weight}")
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= limits.max_n:
        raise RequestError("n", f"must be an integer from 1 to {limits.max_n}, got {n!r}")
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise RequestError("prompt", "must be a string")
    options = {}
    for option in OPTIONS:
        if option.name in body:
            try:
                options[option.name] = option.parse_json(body[option.name])
            except ValueError as e:
                raise RequestError(option.name, str(e)) from None
    max_new = options.get("max_new_tokens", generator.defaults.max_new_tokens)
    if max_new > limits.max_new_tokens:
        raise RequestError("max_new_tokens", f"at most {limits.max_new_tokens} on this server, "
                                             f"got {max_new}")
    try:
        label_ids = generator.label_ids(label)
        generator.check_request(n=n, prompt=prompt, **options)
    except UserError as e:
        field = "label" if "label" in str(e).split(":")[0] else None
        raise RequestError(field, str(e)) from None
    return Request(label, label_ids, n, prompt, options)
