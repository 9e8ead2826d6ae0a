"""Training for edge-seg (Keras 3 on TensorFlow). Needs: pip install 'edge-seg[train]'."""
