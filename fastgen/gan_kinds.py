"""The GAN losses and penalties by name: the values of ``kind`` in ``gan_d_loss``, ``gan_g_loss`` and
``gradient_penalty`` (their formulas: :mod:`fastgen.reference.gan_losses`)."""

D_KINDS = ("minimax", "hinge", "ls", "wgan")
G_KINDS = ("nonsaturating", "saturating", "hinge", "wgan", "ls")
PENALTY_KINDS = ("r1", "wgan-gp")
