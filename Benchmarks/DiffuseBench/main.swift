import Tensors
print("bench: not yet")
