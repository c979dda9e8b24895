"""The enclave-tools demo: state that persists across runs, and a plot saved as a PNG."""

from pathlib import Path

from enclave_tools import Sandbox

OUT = Path("demo-output")


def main() -> None:
    with Sandbox() as sb:  # builds the image on first use (with progress), then starts
        steps = [
            "x = [1, 2, 3, 4, 5]",
            "print(sum(x))",
            "import statistics; statistics.mean(x)",
            "import matplotlib.pyplot as plt\n"
            "plt.plot(x, [v * v for v in x], marker='o')\n"
            "plt.title('x squared')\n"
            "plt.show()",
        ]
        for code in steps:
            execution = sb.run(code)
            first, *more = code.splitlines()
            print(f">>> {first}{' ...' if more else ''}")
            if execution.text:
                print(execution.text)
        OUT.mkdir(exist_ok=True)
        for i, png in enumerate(execution.images, 1):
            path = (OUT / f"plot-{i}.png").resolve()
            path.write_bytes(png)
            print(f"plot written to {path}")


if __name__ == "__main__":
    main()
