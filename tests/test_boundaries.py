"""Inference (bundle, engine, slide, serve) never imports training code, including at export time."""
import subprocess
import sys


def test_inference_modules_import_no_training_module():
    code = ("import sys, saganet.bundle, saganet.engine, saganet.slide.pipeline, saganet.serve.app; "
            "from saganet.run import load_run; "
            "print(sorted(m for m in sys.modules if m in {'saganet.train', 'saganet.evaluate', 'saganet.study', "
            "'saganet.pretrain', 'saganet.selftrain', 'saganet.semi', 'saganet.unlabelled'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
