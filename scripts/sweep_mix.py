"""What a label mix does: the judge's verdict on texts generated for mixes of two labels.

For each weight w, ``n`` texts are generated for the mix ``A=w,B=1-w`` (the same
seed, so text i of every weight starts from the same random numbers) and the
run's classifier (``cln-textgen classifier train``) scores them: the mean
probability of label A and the share judged A.  One generator and one
classifier serve every weight.

    python scripts/sweep_mix.py --run runs/demo --labels positive negative \\
        --weights 0,0.25,0.5,0.75,1 -n 100 --guidance 2
"""

import argparse
import sys
from pathlib import Path

# Lets the script run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, metavar="DIR")
    parser.add_argument("--classifier", metavar="DIR", help="default: <run>-classifier")
    parser.add_argument("--labels", nargs=2, required=True, metavar=("A", "B"),
                        help="the two labels mixed; the weight is A's")
    parser.add_argument("--weights", default="0,0.25,0.5,0.75,1",
                        help="comma-separated weights of A, each in [0, 1]")
    parser.add_argument("-n", type=int, default=100, help="texts per weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="guidance of every mix (against the null condition)")
    parser.add_argument("--temperature", type=float, help="default: the run's")
    parser.add_argument("--top-k", type=int, help="default: the run's")
    args = parser.parse_args(argv)
    try:
        args.weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        parser.error(f"--weights: {args.weights!r} is not a comma-separated list of numbers")
    if any(not 0 <= w <= 1 for w in args.weights):
        parser.error("--weights: each weight must be in [0, 1]")
    if args.n < 1:
        parser.error("-n must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    from cln_textgen.errors import UserError
    from cln_textgen.evaluation.classifier import Classifier, default_dir
    from cln_textgen.generation.generator import TextGenerator

    try:
        generator = TextGenerator.from_run(args.run, label=list(args.labels))
        judge = Classifier.load(args.classifier or default_dir(args.run))
    except UserError as e:
        sys.exit(f"sweep_mix.py: error: {e}")
    a, b = args.labels
    options = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k))
               if v is not None}
    want = judge.labels.index(a)
    print(f"{args.run}: {args.n} texts per mix {a}=w,{b}=1-w, seed {args.seed}, guidance "
          f"{args.guidance}; judge {args.classifier or default_dir(args.run)}")
    print(f"{'w':>5}  {'P(' + a + ')':>12}  {'judged ' + a:>14}")
    for w in args.weights:
        texts = [t["text"] for t in generator.generate(
            {a: w, b: 1.0 - w}, n=args.n, seed=args.seed, guidance=args.guidance, **options)]
        probs = judge.probabilities(texts)
        print(f"{w:>5.2f}  {probs[:, want].mean():>12.3f}  "
              f"{(probs.argmax(-1) == want).mean():>13.1%}", flush=True)


if __name__ == "__main__":
    main()
