"""Explanation: what each convolution filter responds to (activation maximisation), and saliency maps."""
