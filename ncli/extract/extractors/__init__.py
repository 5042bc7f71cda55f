"""One extractor per kind of model: finds the classifier, then turns a batch of inputs into
(features, logits, --layer outputs).

  base         the Extractor interface, LinearRow, output_tensor, first_forward,
               check_reconstruction, pool_layer, guess_input
  eager        nn.Module: forward hooks
  torchscript  TorchScript archive: the graph names the classifier, its weight set to the identity
  export       torch.export program: the graph names the classifier, a copy returns its input
"""
