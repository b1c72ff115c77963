"""What every chapter generator shares: the Colab set-up cell (first code cell)."""

COLAB = '''# On Colab: fetch the book's repository (sokit, the thesis's figures, the stored results)
# and use the GPU; elsewhere this cell does nothing.
import sys
if "google.colab" in sys.modules:
    !git clone -q --depth 1 -b main https://github.com/sokit-book/sokit /content/sokit || git -C /content/sokit pull -q
    %pip install -q -e /content/sokit
    sys.path.insert(0, "/content/sokit")
    from sokit.colab import setup
    setup()'''
